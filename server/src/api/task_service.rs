//! `reins.v1.TaskService`: each RPC converts its request, calls the engine and converts
//! the answer back.

use std::sync::Arc;

use reins_proto::v1 as pb;
use reins_proto::v1::task_service_server::TaskService;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::request;
use super::watch_stream::WatchStream;
use crate::convert::{self, View};
use crate::engine::{CancelRequest, Engine};
use crate::task::Task;

pub(crate) struct TaskApi {
    engine: Arc<Engine>,
    /// Cancelled when the server shuts down: open watch streams end.
    shutdown: CancellationToken,
}

impl TaskApi {
    pub fn new(engine: Arc<Engine>, shutdown: CancellationToken) -> TaskApi {
        TaskApi { engine, shutdown }
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
        let spec = request::new_task(request.into_inner())?;
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

    type WatchTaskStream = WatchStream;

    async fn watch_task(
        &self,
        request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let request = request.into_inner();
        let id = request::task_id("task_id", &request.task_id)?;
        let view = request::view("view", request.view, View::Full)?;
        // 0 is proto3's unset: start from the task as it is now.
        let after_version = (request.after_version != 0).then_some(request.after_version);
        let events = self.engine.watch(id, after_version).await?;
        Ok(Response::new(WatchStream::new(
            Box::pin(events),
            self.shutdown.clone(),
            Arc::clone(&self.engine),
            id,
            request.cancel_on_disconnect,
            view,
        )))
    }

    async fn answer_task(&self, request: Request<pb::AnswerTaskRequest>) -> TaskResult {
        let request = request.into_inner();
        let id = request::task_id("task_id", &request.task_id)?;
        Ok(Response::new(convert::task(
            &self.engine.answer(id, request.answer).await?,
        )))
    }
}
