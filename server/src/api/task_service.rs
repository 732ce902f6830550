//! `reins.v1.TaskService`: each RPC converts its request, calls the engine and converts
//! the answer back.

use std::sync::Arc;
use std::time::Duration;

use reins_proto::v1 as pb;
use reins_proto::v1::task_service_server::TaskService;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::pacing::{self, Events};
use super::request;
use super::watch_stream::WatchStream;
use crate::convert::{self, View};
use crate::engine::{CancelRequest, Engine};
use crate::error::Error;
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
        let spec = request::new_task(request.into_inner(), &self.limits)?;
        let task = self.engine.start(spec).await?;
        Ok(Response::new(convert::task(&task)))
    }

    async fn check_task(&self, request: Request<pb::CheckTaskRequest>) -> TaskResult {
        let request = request.into_inner();
        let id = request::task_id("task_id", &request.task_id)?;
        let view = request::view("view", request.view, View::Full)?;
        let task = self.engine.check(id).await?;
        Ok(Response::new(convert::task_view(&task, view)))
    }

    async fn soft_cancel(
        &self,
        request: Request<pb::SoftCancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let request = request.into_inner();
        let id = request::task_id("task_id", &request.task_id)?;
        let grace = request::duration("grace_period", request.grace_period)?
            .unwrap_or(self.engine.default_grace());
        self.limits.reason(&request.reason)?;
        let done = self
            .engine
            .cancel(id, CancelRequest::Soft { grace }, request.reason)
            .await?;
        Ok(Response::new(self.cancel_response(done)))
    }

    async fn hard_cancel(
        &self,
        request: Request<pb::HardCancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let request = request.into_inner();
        let id = request::task_id("task_id", &request.task_id)?;
        self.limits.reason(&request.reason)?;
        let done = self
            .engine
            .cancel(id, CancelRequest::Hard, request.reason)
            .await?;
        Ok(Response::new(self.cancel_response(done)))
    }

    async fn list_active(
        &self,
        request: Request<pb::ListActiveRequest>,
    ) -> Result<Response<pb::ListActiveResponse>, Status> {
        let (filter, after, page_size) = request::list_query(request.get_ref())?;
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
                .map(request::encode_page_token)
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
        let deadline = pacing::client_deadline(request.metadata());
        let request = request.into_inner();
        let id = request::task_id("task_id", &request.task_id)?;
        let view = request::view("view", request.view, View::Full)?;
        // 0 is proto3's unset: start from the task as it is now.
        let after_version = (request.after_version != 0).then_some(request.after_version);
        let events = self.engine.watch(id, after_version).await?;
        let watch = WatchStream::new(
            Box::pin(events),
            self.shutdown.clone(),
            Arc::clone(&self.engine),
            id,
            request.cancel_on_disconnect,
            view,
        );
        Ok(Response::new(pacing::paced(
            Box::pin(watch),
            self.watch_heartbeat,
            deadline,
        )))
    }

    async fn answer_task(&self, request: Request<pb::AnswerTaskRequest>) -> TaskResult {
        let request = request.into_inner();
        let id = request::task_id("task_id", &request.task_id)?;
        self.limits.answer(&request.answer)?;
        Ok(Response::new(convert::task(
            &self.engine.answer(id, request.answer).await?,
        )))
    }
}
