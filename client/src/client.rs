//! [`Client`]: one method per `TaskService` RPC over a shared tonic channel, plus the
//! [`StartTask`] builder and the [`WatchOptions`] of a watch.

use std::time::Duration;

use futures_util::{TryStreamExt, stream};
use reins_proto::v1::{
    AnswerTaskRequest, CancelResponse, CheckTaskRequest, HardCancelRequest, ListActiveRequest,
    ListActiveResponse, SoftCancelRequest, StartTaskRequest, Task, TaskEvent, TaskView,
    WatchTaskRequest, task_service_client::TaskServiceClient,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{
    Status,
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

use crate::credentials::BearerToken;
use crate::{Credentials, Error, duration, json};

/// The generated stub, with the credentials' token on every call.
pub type Stub = TaskServiceClient<InterceptedService<Channel, BearerToken>>;

/// How long [`Client::connect`] (and each later reconnect) waits for a TCP connection;
/// without a limit a silently dropped SYN blocks for the OS default of minutes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to a Reins server.
///
/// Cloning is cheap: clones share one HTTP/2 channel, so clone freely to make calls from
/// several tasks at once.
#[derive(Debug, Clone)]
pub struct Client {
    stub: Stub,
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
        })
    }

    /// Uses an existing channel, e.g. one with custom timeouts or TLS settings.
    pub fn from_channel(channel: Channel) -> Client {
        Client {
            stub: TaskServiceClient::with_interceptor(channel, BearerToken::none()),
        }
    }

    /// The generated stub (a clone sharing this client's channel), for calls that need
    /// request metadata or anything else this wrapper does not expose.
    pub fn raw(&self) -> Stub {
        self.stub.clone()
    }

    /// Starts a task (or returns the existing one when its request id was seen before).
    pub async fn start(&self, task: StartTask) -> Result<Task, Status> {
        let response = self.raw().start_task(StartTaskRequest::from(task)).await?;
        Ok(response.into_inner())
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
        Ok(self.raw().check_task(request).await?.into_inner())
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
        Ok(self.raw().soft_cancel(request).await?.into_inner())
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
        Ok(self.raw().hard_cancel(request).await?.into_inner())
    }

    /// One page of active tasks matching `filter`.
    pub async fn list(&self, filter: ListActiveRequest) -> Result<ListActiveResponse, Status> {
        Ok(self.raw().list_active(filter).await?.into_inner())
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
        let events = self.raw().watch_task(request).await?.into_inner();
        Ok(events.filter(|event| {
            !matches!(
                event,
                Ok(TaskEvent {
                    heartbeat: true,
                    ..
                })
            )
        }))
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
        Ok(self.raw().answer_task(request).await?.into_inner())
    }
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
                .max_attempts(3),
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
