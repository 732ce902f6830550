//! `reins.v1.TaskService`: each RPC converts its request, calls the engine and converts
//! the answer back.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{FutureExt, Stream, StreamExt};
use reins_proto::v1 as pb;
use reins_proto::v1::task_service_server::TaskService;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Request, Response, Status};

use super::convert;
use crate::engine::{CancelRequest, Engine};
use crate::task::{Task, TaskId};

pub struct TaskApi {
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
        let spec = convert::new_task(request.into_inner())?;
        let task = self.engine.start(spec).await?;
        Ok(Response::new(convert::task(&task)))
    }

    async fn check_task(&self, request: Request<pb::CheckTaskRequest>) -> TaskResult {
        let id = convert::task_id("task_id", &request.get_ref().task_id)?;
        Ok(Response::new(convert::task(&self.engine.check(id).await?)))
    }

    async fn soft_cancel(
        &self,
        request: Request<pb::SoftCancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let request = request.into_inner();
        let id = convert::task_id("task_id", &request.task_id)?;
        let grace = convert::duration("grace_period", request.grace_period)?
            .unwrap_or(self.engine.config().default_grace);
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
        let id = convert::task_id("task_id", &request.task_id)?;
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
        let (filter, after, page_size) = convert::list_query(request.get_ref())?;
        let page = self.engine.list_active(&filter, after, page_size).await?;
        Ok(Response::new(pb::ListActiveResponse {
            tasks: page.tasks.iter().map(convert::task).collect(),
            next_page_token: page
                .next_after
                .map(convert::encode_page_token)
                .unwrap_or_default(),
        }))
    }

    type WatchTaskStream = WatchStream;

    async fn watch_task(
        &self,
        request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let request = request.into_inner();
        let id = convert::task_id("task_id", &request.task_id)?;
        // 0 is proto3's unset: start from the task as it is now.
        let after_version = (request.after_version != 0).then_some(request.after_version);
        let events = self.engine.watch(id, after_version).await?;
        Ok(Response::new(WatchStream {
            events: Box::pin(events),
            shutdown: Box::pin(self.shutdown.clone().cancelled_owned()),
            cancel_on_disconnect: request
                .cancel_on_disconnect
                .then(|| (Arc::clone(&self.engine), id)),
            ended: false,
        }))
    }

    async fn answer_task(&self, request: Request<pb::AnswerTaskRequest>) -> TaskResult {
        let request = request.into_inner();
        let id = convert::task_id("task_id", &request.task_id)?;
        Ok(Response::new(convert::task(
            &self.engine.answer(id, request.answer).await?,
        )))
    }
}

/// A watch: the task's versions as events until its terminal one. Ends with UNAVAILABLE
/// when the server shuts down (watch again elsewhere). If the client hangs up first and
/// asked for `cancel_on_disconnect`, the task is soft-cancelled.
pub struct WatchStream {
    events: Pin<Box<dyn Stream<Item = Task> + Send>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Armed until the task ends or the server ends the stream.
    cancel_on_disconnect: Option<(Arc<Engine>, TaskId)>,
    ended: bool,
}

impl Stream for WatchStream {
    type Item = Result<pb::TaskEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // Changes already published go out before the shutdown ends the stream, so a task
        // settled by the shutdown is seen in its terminal state.
        match self.events.poll_next_unpin(cx) {
            Poll::Ready(Some(task)) => {
                if task.state.is_terminal() {
                    self.cancel_on_disconnect = None;
                }
                return Poll::Ready(Some(Ok(convert::event(&task))));
            }
            Poll::Ready(None) => {
                self.ended = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if self.shutdown.poll_unpin(cx).is_ready() {
            self.ended = true;
            self.cancel_on_disconnect = None;
            return Poll::Ready(Some(Err(Status::unavailable(
                "the server is shutting down; watch the task again",
            ))));
        }
        Poll::Pending
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        if let Some((engine, id)) = self.cancel_on_disconnect.take() {
            let grace = engine.config().default_grace;
            tracing::info!(task = %id, "watcher disconnected; soft-cancelling the task");
            tokio::spawn(async move {
                let _ = engine
                    .cancel(
                        id,
                        CancelRequest::Soft { grace },
                        "watcher disconnected".to_owned(),
                    )
                    .await;
            });
        }
    }
}
