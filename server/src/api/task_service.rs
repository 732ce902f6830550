//! `reins.v1.TaskService`: each RPC converts its request, calls the engine on behalf of
//! the caller the auth layer found (its tenant scopes everything) and converts the answer
//! back. Starts, cancels and answers leave an audit line (`auth::audit`).

use std::sync::Arc;
use std::time::Duration;

use reins_proto::v1 as pb;
use reins_proto::v1::task_service_server::TaskService;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::pacing::{self, Events};
use super::request;
use super::ties::Ties;
use super::watch_stream::WatchStream;
use crate::auth::{Caller, audit};
use crate::convert::{self, View};
use crate::engine::{CancelRequest, Engine};
use crate::error::Error;
use crate::limits::Limits;
use crate::task::{Task, TaskId};
use crate::telemetry::traces::{self, grpc::record_task};

pub(crate) struct TaskApi {
    engine: Arc<Engine>,
    /// What one request may put into a task.
    limits: Limits,
    /// Cancelled when the server shuts down: open watch streams end.
    shutdown: CancellationToken,
    /// How long a watch may be quiet before a heartbeat event (`--watch-heartbeat`).
    watch_heartbeat: Option<Duration>,
    /// The calls tied to their task's life open here ("last watcher leaves").
    ties: Arc<Ties>,
}

impl TaskApi {
    pub fn new(
        engine: Arc<Engine>,
        limits: Limits,
        shutdown: CancellationToken,
        watch_heartbeat: Option<Duration>,
    ) -> TaskApi {
        TaskApi {
            ties: Ties::new(Arc::clone(&engine)),
            engine,
            limits,
            shutdown,
            watch_heartbeat,
        }
    }

    /// The stream of a watch (or a run) of task `id`, tied to it if `tie` names a reason.
    async fn stream(
        &self,
        caller: Caller,
        id: TaskId,
        after_version: Option<u64>,
        view: View,
        tie: Option<&'static str>,
        deadline: Option<Duration>,
    ) -> Result<Events, Status> {
        let events = self.engine.watch(&caller, id, after_version).await?;
        let held = self.engine.hold_watch(&caller).await?;
        let watch = WatchStream::new(
            Box::pin(events),
            self.shutdown.clone(),
            Arc::clone(&self.engine),
            id,
            tie.map(|reason| self.ties.tie(id, reason, caller)),
            view,
        )
        .holding(held);
        Ok(pacing::paced(
            Box::pin(watch),
            self.watch_heartbeat,
            deadline,
        ))
    }

    fn cancel_response(
        &self,
        (task, outcome): (Task, crate::task::cancel::CancelOutcome),
    ) -> pb::CancelResponse {
        record_task(&task);
        pb::CancelResponse {
            task: Some(convert::task(&task)),
            outcome: convert::cancel_outcome(outcome) as i32,
        }
    }
}

type TaskResult = Result<Response<pb::Task>, Status>;

#[tonic::async_trait]
impl TaskService for TaskApi {
    async fn start_task(&self, request: Request<pb::StartTaskRequest>) -> TaskResult {
        let caller = Caller::of(&request)?;
        let mut spec = request::new_task(request.into_inner(), &self.limits)?;
        spec.trace_context = traces::current_context();
        let started = self.engine.start(&caller, spec).await;
        let id = started.as_ref().ok().map(|task| task.id);
        audit::record(&caller, "start", id, &started);
        let task = started?;
        record_task(&task);
        Ok(Response::new(convert::task(&task)))
    }

    async fn check_task(&self, request: Request<pb::CheckTaskRequest>) -> TaskResult {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let id = request::task_id("task_id", &request.task_id)?;
        let view = request::view("view", request.view, View::Full)?;
        let task = self.engine.check_as(&caller, id).await?;
        record_task(&task);
        Ok(Response::new(convert::task_view(&task, view)))
    }

    async fn soft_cancel(
        &self,
        request: Request<pb::SoftCancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let id = request::task_id("task_id", &request.task_id)?;
        let grace = request::duration("grace_period", request.grace_period)?
            .unwrap_or(self.engine.default_grace());
        self.limits.reason(&request.reason)?;
        let done = self
            .engine
            .cancel(&caller, id, CancelRequest::Soft { grace }, request.reason)
            .await;
        audit::record(&caller, "soft_cancel", Some(id), &done);
        Ok(Response::new(self.cancel_response(done?)))
    }

    async fn hard_cancel(
        &self,
        request: Request<pb::HardCancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let id = request::task_id("task_id", &request.task_id)?;
        self.limits.reason(&request.reason)?;
        let done = self
            .engine
            .cancel(&caller, id, CancelRequest::Hard, request.reason)
            .await;
        audit::record(&caller, "hard_cancel", Some(id), &done);
        Ok(Response::new(self.cancel_response(done?)))
    }

    async fn list_active(
        &self,
        request: Request<pb::ListActiveRequest>,
    ) -> Result<Response<pb::ListActiveResponse>, Status> {
        let caller = Caller::of(&request)?;
        let (filter, after, page_size) =
            request::list_query(request.get_ref(), caller.list_scope())?;
        // BASIC unless asked: a page of FULL tasks could exceed the message size.
        let view = request::view("view", request.get_ref().view, View::Basic)?;
        let page = self.engine.list_active(&filter, after, page_size).await?;
        Ok(Response::new(pb::ListActiveResponse {
            tasks: page
                .tasks
                .iter()
                .map(|task| convert::task_view(task, view))
                .collect(),
            next_page_token: page
                .next_after
                .map(|after| request::encode_page_token(after, &filter))
                .unwrap_or_default(),
        }))
    }

    type WatchTaskStream = Events;

    async fn watch_task(
        &self,
        request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Events>, Status> {
        if self.shutdown.is_cancelled() {
            // Draining: watch through a replica that stays.
            return Err(Error::ShuttingDown.into());
        }
        let caller = Caller::of(&request)?;
        let deadline = pacing::client_deadline(request.metadata());
        let request = request.into_inner();
        let id = request::task_id("task_id", &request.task_id)?;
        let view = request::view("view", request.view, View::Full)?;
        // 0 is proto3's unset: start from the task as it is now.
        let after_version = (request.after_version != 0).then_some(request.after_version);
        let tie = request
            .cancel_on_disconnect
            .then_some("watcher disconnected");
        Ok(Response::new(
            self.stream(caller, id, after_version, view, tie, deadline)
                .await?,
        ))
    }

    type RunTaskStream = Events;

    async fn run_task(
        &self,
        request: Request<pb::RunTaskRequest>,
    ) -> Result<Response<Events>, Status> {
        let caller = Caller::of(&request)?;
        let deadline = pacing::client_deadline(request.metadata());
        let request = request.into_inner();
        let Some(start) = request.task else {
            return Err(Error::invalid("task", "required").into());
        };
        let mut spec = request::new_task(start, &self.limits).map_err(request::nested("task"))?;
        spec.trace_context = traces::current_context();
        // Idempotent on request_id: a second RunTask re-attaches to the same task.
        let started = self.engine.start(&caller, spec).await;
        let id = started.as_ref().ok().map(|task| task.id);
        audit::record(&caller, "run", id, &started);
        let task = started?;
        record_task(&task);
        let tie = (!request.continue_on_disconnect).then_some("caller disconnected");
        Ok(Response::new(
            self.stream(caller, task.id, None, View::Full, tie, deadline)
                .await?,
        ))
    }

    async fn cancel_tasks(
        &self,
        request: Request<pb::CancelTasksRequest>,
    ) -> Result<Response<pb::CancelTasksResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let query = request::bulk_cancel(&request, caller.list_scope())?;
        self.limits.reason(&request.reason)?;
        let mode = match query.mode {
            pb::CancelMode::Hard => CancelRequest::Hard,
            _ => CancelRequest::Soft {
                grace: query.grace.unwrap_or(self.engine.default_grace()),
            },
        };
        let done = self
            .engine
            .cancel_tasks(&caller, &query.filter, mode, request.reason, query.dry_run)
            .await;
        audit::record(&caller, "cancel_tasks", None, &done);
        let done = done?;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(Response::new(pb::CancelTasksResponse {
            matched: count(done.matched),
            cancelled: count(done.cancelled),
            requested: count(done.requested),
            already_finished: count(done.already_finished),
            truncated: done.matched > done.task_ids.len(),
            task_ids: done.task_ids.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn answer_task(&self, request: Request<pb::AnswerTaskRequest>) -> TaskResult {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let id = request::task_id("task_id", &request.task_id)?;
        self.limits.answer(&request.answer)?;
        let answered = self.engine.answer(&caller, id, request.answer).await;
        audit::record(&caller, "answer", Some(id), &answered);
        let task = answered?;
        record_task(&task);
        Ok(Response::new(convert::task(&task)))
    }
}
