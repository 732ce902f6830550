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
use super::watch_stream::WatchStream;
use crate::auth::{Caller, audit};
use crate::convert::{self, View};
use crate::engine::{CancelRequest, Engine};
use crate::limits::Limits;
use crate::task::Task;

pub(crate) struct TaskApi {
    engine: Arc<Engine>,
    /// What one request may put into a task.
    limits: Limits,
    /// Cancelled when the server shuts down: open watch streams end.
    shutdown: CancellationToken,
    /// How long a watch may be quiet before a heartbeat event (`--watch-heartbeat`).
    watch_heartbeat: Option<Duration>,
}

impl TaskApi {
    pub fn new(
        engine: Arc<Engine>,
        limits: Limits,
        shutdown: CancellationToken,
        watch_heartbeat: Option<Duration>,
    ) -> TaskApi {
        TaskApi {
            engine,
            limits,
            shutdown,
            watch_heartbeat,
        }
    }

    fn cancel_response(
        &self,
        (task, outcome): (Task, crate::task::cancel::CancelOutcome),
    ) -> pb::CancelResponse {
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
        let spec = request::new_task(request.into_inner(), &self.limits)?;
        let started = self.engine.start(&caller, spec).await;
        let id = started.as_ref().ok().map(|task| task.id);
        audit::record(&caller, "start", id, &started);
        Ok(Response::new(convert::task(&started?)))
    }

    async fn check_task(&self, request: Request<pb::CheckTaskRequest>) -> TaskResult {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let id = request::task_id("task_id", &request.task_id)?;
        let view = request::view("view", request.view, View::Full)?;
        let task = self.engine.check_as(&caller, id).await?;
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
        let caller = Caller::of(&request)?;
        let deadline = pacing::client_deadline(request.metadata());
        let request = request.into_inner();
        let id = request::task_id("task_id", &request.task_id)?;
        let view = request::view("view", request.view, View::Full)?;
        // 0 is proto3's unset: start from the task as it is now.
        let after_version = (request.after_version != 0).then_some(request.after_version);
        let events = self.engine.watch(&caller, id, after_version).await?;
        let held = self.engine.hold_watch(&caller).await?;
        let watch = WatchStream::new(
            Box::pin(events),
            self.shutdown.clone(),
            Arc::clone(&self.engine),
            caller,
            id,
            request.cancel_on_disconnect,
            view,
        )
        .holding(held);
        Ok(Response::new(pacing::paced(
            Box::pin(watch),
            self.watch_heartbeat,
            deadline,
        )))
    }

    async fn answer_task(&self, request: Request<pb::AnswerTaskRequest>) -> TaskResult {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let id = request::task_id("task_id", &request.task_id)?;
        self.limits.answer(&request.answer)?;
        let answered = self.engine.answer(&caller, id, request.answer).await;
        audit::record(&caller, "answer", Some(id), &answered);
        Ok(Response::new(convert::task(&answered?)))
    }
}
