//! [`Client`]: one method per `TaskService` RPC over a shared tonic channel, plus the
//! [`StartTask`] builder and the [`WatchOptions`] of a watch.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{TryStreamExt, stream};
use reins_proto::v1::{
    AnswerTaskRequest, CancelResponse, CancelTasksRequest, CancelTasksResponse, CheckTaskRequest,
    HardCancelRequest, ListActiveRequest, ListActiveResponse, RunTaskRequest, SoftCancelRequest,
    StartTaskRequest, Task, TaskEvent, TaskView, WatchTaskRequest,
    task_service_client::TaskServiceClient,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{
    Status,
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

use crate::credentials::BearerToken;
use crate::propagation::traced;
use crate::retry::{self, ServiceConfig};
use crate::{Credentials, Error, duration, json};

/// The generated stub, with the credentials' token on every call.
pub type Stub = TaskServiceClient<InterceptedService<Channel, BearerToken>>;

/// How long [`Client::connect`] (and each later reconnect) waits for a TCP connection;
/// without a limit a silently dropped SYN blocks for the OS default of minutes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many streams this client cancelled (a watch dropped before its end, a call given
/// up) HTTP/2 remembers, so that the server's frames still in flight on them are ignored.
/// h2 remembers only 10 by default and counts a frame on a forgotten one as the server's
/// error: after 1,024 of them it closes the whole connection with ENHANCE_YOUR_CALM,
/// failing every call on it. A client dropping watches of finished tasks at a high rate
/// (the benchmark's 128 in flight) got there within seconds.
const RESET_STREAMS_REMEMBERED: usize = 4096;

/// A connection to a Reins server.
///
/// Cloning is cheap: clones share one HTTP/2 channel, so clone freely to make calls from
/// several tasks at once.
///
/// Idempotent calls are retried on UNAVAILABLE (a draining replica, a store outage) as the
/// shipped `deploy/grpc-service-config.json` says (see [`crate::retry`]): CheckTask,
/// ListActive, WatchTask (until its first event), SoftCancel, HardCancel, CancelTasks, and
/// StartTask and RunTask when they carry a `request_id`. [`Client::with_service_config`] replaces the policy.
#[derive(Debug, Clone)]
pub struct Client {
    stub: Stub,
    config: Arc<ServiceConfig>,
}

impl Client {
    /// Connects to `url`: `http://host:port`, `https://host:port` or a bare `host:port`
    /// (taken as plain-text `http`). Fails right away when the server cannot be reached,
    /// and gives up on an unresponsive address after [`CONNECT_TIMEOUT`].
    pub async fn connect(url: impl Into<String>) -> Result<Client, Error> {
        Client::connect_with(url, &Credentials::default()).await
    }

    /// Connects to `url` with `credentials`: their token goes with every call; TLS is used
    /// for `https://` URLs, and for a bare `host:port` when the credentials have a CA or a
    /// client certificate.
    pub async fn connect_with(
        url: impl Into<String>,
        credentials: &Credentials,
    ) -> Result<Client, Error> {
        let channel = connect_channel(url.into(), credentials).await?;
        Ok(Client {
            stub: TaskServiceClient::with_interceptor(channel, credentials.interceptor()?),
            config: Arc::new(ServiceConfig::shipped().clone()),
        })
    }

    /// Uses an existing channel, e.g. one with custom timeouts or TLS settings.
    pub fn from_channel(channel: Channel) -> Client {
        Client {
            stub: TaskServiceClient::with_interceptor(channel, BearerToken::none()),
            config: Arc::new(ServiceConfig::shipped().clone()),
        }
    }

    /// Retries as `config` says instead of the shipped service config
    /// (`ServiceConfig::default()`: no retries on UNAVAILABLE).
    pub fn with_service_config(mut self, config: ServiceConfig) -> Client {
        self.config = Arc::new(config);
        self
    }

    /// Runs one call of `method` with its retry policy.
    async fn retried<T, F, Fut>(&self, method: &str, call: F) -> Result<T, Status>
    where
        F: FnMut(Stub) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.retried_if(method, true, call).await
    }

    /// As [`Client::retried`], with the policy only if `idempotent`.
    async fn retried_if<T, F, Fut>(
        &self,
        method: &str,
        idempotent: bool,
        mut call: F,
    ) -> Result<T, Status>
    where
        F: FnMut(Stub) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let policy = idempotent.then(|| self.config.policy(method)).flatten();
        retry::with_retries(policy, || {
            let response = call(self.raw());
            async move { response.await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// The generated stub (a clone sharing this client's channel), for calls that need
    /// request metadata or anything else this wrapper does not expose.
    pub fn raw(&self) -> Stub {
        self.stub.clone()
    }

    /// Starts a task (or returns the existing one when its request id was seen before).
    pub async fn start(&self, task: StartTask) -> Result<Task, Status> {
        let request = StartTaskRequest::from(task);
        // Only a request id makes a second StartTask return the first one's task.
        let idempotent = !request.request_id.is_empty();
        self.retried_if("StartTask", idempotent, |mut stub| {
            let request = request.clone();
            async move { stub.start_task(traced(request)).await }
        })
        .await
    }

    /// Reads a task as it is now (all of it).
    pub async fn check(&self, task_id: impl Into<String>) -> Result<Task, Status> {
        self.check_view(task_id, TaskView::Full).await
    }

    /// Reads a task as it is now, in `view` (BASIC: without params, partial results and
    /// result).
    pub async fn check_view(
        &self,
        task_id: impl Into<String>,
        view: TaskView,
    ) -> Result<Task, Status> {
        let request = CheckTaskRequest {
            task_id: task_id.into(),
            view: view as i32,
        };
        self.retried("CheckTask", |mut stub| {
            let request = request.clone();
            async move { stub.check_task(traced(request)).await }
        })
        .await
    }

    /// Asks a task and its subtree to stop at the next checkpoint; the server hard-cancels
    /// it after `grace` (`None`: the server's default grace period).
    pub async fn soft_cancel(
        &self,
        task_id: impl Into<String>,
        reason: impl Into<String>,
        grace: Option<Duration>,
    ) -> Result<CancelResponse, Status> {
        let request = SoftCancelRequest {
            task_id: task_id.into(),
            reason: reason.into(),
            grace_period: grace.map(duration::to_proto),
        };
        self.retried("SoftCancel", |mut stub| {
            let request = request.clone();
            async move { stub.soft_cancel(traced(request)).await }
        })
        .await
    }

    /// Stops a task and its subtree now.
    pub async fn hard_cancel(
        &self,
        task_id: impl Into<String>,
        reason: impl Into<String>,
    ) -> Result<CancelResponse, Status> {
        let request = HardCancelRequest {
            task_id: task_id.into(),
            reason: reason.into(),
        };
        self.retried("HardCancel", |mut stub| {
            let request = request.clone();
            async move { stub.hard_cancel(traced(request)).await }
        })
        .await
    }

    /// Cancels every active task matching the request's filters (at least one), each with
    /// its subtree; with `dry_run` only counts them. See [`CancelTasksRequest`]. Retried on
    /// UNAVAILABLE: a second bulk cancel finds what the first one cancelled already settled.
    pub async fn cancel_tasks(
        &self,
        request: CancelTasksRequest,
    ) -> Result<CancelTasksResponse, Status> {
        self.retried("CancelTasks", |mut stub| {
            let request = request.clone();
            async move { stub.cancel_tasks(traced(request)).await }
        })
        .await
    }

    /// One page of active tasks matching `filter`.
    pub async fn list(&self, filter: ListActiveRequest) -> Result<ListActiveResponse, Status> {
        self.retried("ListActive", |mut stub| {
            let request = filter.clone();
            async move { stub.list_active(traced(request)).await }
        })
        .await
    }

    /// Every active task matching `filter`, fetching page after page (starting at
    /// `filter.page_token`) until the server reports the last one. Stops at the first error.
    pub fn list_all(
        &self,
        filter: ListActiveRequest,
    ) -> impl Stream<Item = Result<Task, Status>> + Unpin + Send + 'static {
        let client = self.clone();
        // The state is the request for the next page; `None` once the last page was read.
        let pages = stream::try_unfold(Some(filter), move |next_request| {
            let client = client.clone();
            async move {
                let Some(request) = next_request else {
                    return Ok::<_, Status>(None);
                };
                let ListActiveResponse {
                    tasks,
                    next_page_token,
                } = client.list(request.clone()).await?;
                let following = if next_page_token.is_empty() {
                    None
                } else {
                    Some(ListActiveRequest {
                        page_token: next_page_token,
                        ..request
                    })
                };
                Ok(Some((tasks, following)))
            }
        });
        // Boxed so callers can poll it without pinning it first.
        Box::pin(
            pages
                .map_ok(|tasks| stream::iter(tasks.into_iter().map(Ok)))
                .try_flatten(),
        )
    }

    /// Streams the task as it is now (or, with `after_version`, the changes after that
    /// version), then every change; the stream ends right after the terminal state. The
    /// server's heartbeat events (which keep a quiet stream alive through proxies) are
    /// skipped: every event is a new version.
    pub async fn watch(
        &self,
        task_id: impl Into<String>,
        options: WatchOptions,
    ) -> Result<impl Stream<Item = Result<TaskEvent, Status>> + Unpin + Send + 'static, Status>
    {
        let request = WatchTaskRequest {
            task_id: task_id.into(),
            cancel_on_disconnect: options.cancel_on_disconnect,
            after_version: options.after_version,
            view: options.view as i32,
        };
        let events = self
            .retried("WatchTask", |mut stub| {
                let request = request.clone();
                async move { stub.watch_task(traced(request)).await }
            })
            .await?;
        Ok(without_heartbeats(events))
    }

    /// Starts the task and streams it like [`Client::watch`] until its terminal event.
    /// Dropping the stream before then soft-cancels the task ("caller disconnected"),
    /// unless `continue_on_disconnect`; with a request id, a second `run` re-attaches to
    /// the same task and the task is cancelled only when the last tied call leaves.
    /// Retried on UNAVAILABLE only with a request id (re-attaching, not starting twice).
    pub async fn run(
        &self,
        task: StartTask,
        continue_on_disconnect: bool,
    ) -> Result<impl Stream<Item = Result<TaskEvent, Status>> + Unpin + Send + 'static, Status>
    {
        let request = RunTaskRequest {
            task: Some(task.into()),
            continue_on_disconnect,
        };
        let idempotent = request
            .task
            .as_ref()
            .is_some_and(|task| !task.request_id.is_empty());
        let events = self
            .retried_if("RunTask", idempotent, |mut stub| {
                let request = request.clone();
                async move { stub.run_task(traced(request)).await }
            })
            .await?;
        Ok(without_heartbeats(events))
    }

    /// Answers the open question of a task in WAITING_FOR_ANSWER, which resumes it.
    pub async fn answer(
        &self,
        task_id: impl Into<String>,
        answer: impl Into<String>,
    ) -> Result<Task, Status> {
        let request = AnswerTaskRequest {
            task_id: task_id.into(),
            answer: answer.into(),
        };
        // Not idempotent: a second answer finds the task no longer waiting.
        self.retried_if("AnswerTask", false, |mut stub| {
            let request = request.clone();
            async move { stub.answer_task(traced(request)).await }
        })
        .await
    }
}

/// Events without the server's heartbeats: every event is a new version.
fn without_heartbeats(
    events: impl Stream<Item = Result<TaskEvent, Status>> + Unpin + Send + 'static,
) -> impl Stream<Item = Result<TaskEvent, Status>> + Unpin + Send + 'static {
    events.filter(|event| {
        !matches!(
            event,
            Ok(TaskEvent {
                heartbeat: true,
                ..
            })
        )
    })
}

/// How to watch a task; the default watches from the current state and leaves the task
/// alone when the watch ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// Soft-cancel the task if the watch stream ends before the task does.
    pub cancel_on_disconnect: bool,
    /// Resume a watch: replay only the changes after this version (0: from the current state).
    pub after_version: u64,
    /// The view of the task in each event (unspecified: FULL).
    pub view: TaskView,
}

/// A task to start: `StartTask::new(kind)` plus whichever optional settings it needs.
///
/// ```
/// use std::time::Duration;
/// use reins_client::{StartTask, proto::StartTaskRequest};
///
/// let request: StartTaskRequest = StartTask::new("sleep")
///     .params(serde_json::json!({ "ms": 500 }))
///     .label("team", "infra")
///     .timeout(Duration::from_secs(5))
///     .into();
/// assert_eq!(request.labels["team"], "infra");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a StartTask does nothing until it is passed to Client::start"]
pub struct StartTask {
    request: StartTaskRequest,
}

/// A channel to `given` (see [`Client::connect_with`]).
pub async fn connect_channel(given: String, credentials: &Credentials) -> Result<Channel, Error> {
    let url = if given.contains("://") {
        given.clone()
    } else if credentials.wants_tls() {
        format!("https://{given}")
    } else {
        format!("http://{given}")
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|err| Error::InvalidUrl(format!("`{given}`: {err}")))?;
    if url.starts_with("https://") {
        endpoint = endpoint
            .tls_config(credentials.tls_config())
            .map_err(Error::Connect)?;
    }
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_max_concurrent_reset_streams(RESET_STREAMS_REMEMBERED)
        .connect()
        .await
        .map_err(Error::Connect)
}

impl StartTask {
    /// A task of `kind` (e.g. `sleep`, `exec`) with no parameters.
    pub fn new(kind: impl Into<String>) -> StartTask {
        StartTask {
            request: StartTaskRequest {
                kind: kind.into(),
                ..StartTaskRequest::default()
            },
        }
    }

    /// The kind-specific parameters.
    ///
    /// # Panics
    ///
    /// If `params` is not a JSON object: protobuf carries parameters as a `Struct`, which
    /// has nowhere to put anything else. Use [`json::object_to_struct`] to check untrusted
    /// input first.
    pub fn params(mut self, params: serde_json::Value) -> StartTask {
        match json::object_to_struct(&params) {
            Ok(fields) => self.request.params = Some(fields),
            Err(err) => panic!("StartTask::params: {err}"),
        }
        self
    }

    /// A human-readable description, shown when listing tasks.
    pub fn description(mut self, description: impl Into<String>) -> StartTask {
        self.request.description = description.into();
        self
    }

    /// Makes the task a child of `parent_id`: cancelling the parent cancels it too.
    pub fn parent(mut self, parent_id: impl Into<String>) -> StartTask {
        self.request.parent_id = parent_id.into();
        self
    }

    /// A detached child keeps running when its parent finishes.
    pub fn detached(mut self, detached: bool) -> StartTask {
        self.request.detached = detached;
        self
    }

    /// Groups the task with others of the same session, e.g. for `list --session`.
    pub fn session(mut self, session_id: impl Into<String>) -> StartTask {
        self.request.session_id = session_id.into();
        self
    }

    /// Adds one label; a second label with the same key replaces the first.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> StartTask {
        self.request.labels.insert(key.into(), value.into());
        self
    }

    /// Maximum running time, counted from the start.
    pub fn timeout(mut self, timeout: Duration) -> StartTask {
        self.request.timeout = Some(duration::to_proto(timeout));
        self
    }

    /// Idempotency key: starting again with the same key returns the first task.
    pub fn request_id(mut self, request_id: impl Into<String>) -> StartTask {
        self.request.request_id = request_id.into();
        self
    }

    /// How many times the task may be started if the worker or replica running it is lost.
    pub fn max_attempts(mut self, max_attempts: u32) -> StartTask {
        self.request.max_attempts = max_attempts;
        self
    }

    /// A limit of the task's budget: the server soft-cancels the task and its subtree once
    /// their usage of `dimension` reaches `limit`.
    pub fn budget(mut self, dimension: impl Into<String>, limit: f64) -> StartTask {
        self.request.budget.insert(dimension.into(), limit);
        self
    }
}

impl From<StartTask> for StartTaskRequest {
    fn from(task: StartTask) -> StartTaskRequest {
        task.request
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    #[test]
    fn builder_fills_every_field() {
        let request = StartTaskRequest::from(
            StartTask::new("exec")
                .params(json!({"argv": ["true"]}))
                .description("runs true")
                .parent("parent-1")
                .detached(true)
                .session("session-1")
                .label("a", "1")
                .label("b", "2")
                .timeout(Duration::from_millis(1500))
                .request_id("req-1")
                .max_attempts(3)
                .budget("output_tokens", 10000.0),
        );
        let expected = StartTaskRequest {
            kind: "exec".into(),
            description: "runs true".into(),
            params: Some(json::object_to_struct(&json!({"argv": ["true"]})).unwrap()),
            parent_id: "parent-1".into(),
            detached: true,
            session_id: "session-1".into(),
            labels: HashMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]),
            timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            request_id: "req-1".into(),
            max_attempts: 3,
            budget: HashMap::from([("output_tokens".into(), 10000.0)]),
        };
        assert_eq!(request, expected);
    }

    #[test]
    fn new_sets_only_the_kind() {
        let request = StartTaskRequest::from(StartTask::new("sleep"));
        assert_eq!(
            request,
            StartTaskRequest {
                kind: "sleep".into(),
                ..StartTaskRequest::default()
            }
        );
    }

    #[test]
    #[should_panic(expected = "expected a JSON object, got an array")]
    fn params_must_be_an_object() {
        let _ = StartTask::new("sleep").params(json!([1]));
    }

    #[tokio::test]
    async fn bare_host_port_is_taken_as_http() {
        // Nothing listens on port 1: getting as far as a connect error (rather than
        // InvalidUrl) shows the bare address was accepted and completed.
        let err = Client::connect("127.0.0.1:1").await.unwrap_err();
        assert!(matches!(err, Error::Connect(_)), "{err:?}");
    }

    #[tokio::test]
    async fn malformed_url_is_rejected() {
        let err = Client::connect("http://bad host:50051").await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidUrl(url) if url.contains("bad host")),
            "{err:?}"
        );
    }
}
