//! `reins.v1.TaskService`: each RPC converts its request, calls the engine and converts
//! the answer back.

use std::collections::VecDeque;
use std::future::Future;
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
        Ok(Response::new(WatchStream::new(
            Box::pin(events),
            self.shutdown.clone(),
            Arc::clone(&self.engine),
            id,
            request.cancel_on_disconnect,
        )))
    }

    async fn answer_task(&self, request: Request<pb::AnswerTaskRequest>) -> TaskResult {
        let request = request.into_inner();
        let id = convert::task_id("task_id", &request.task_id)?;
        Ok(Response::new(convert::task(
            &self.engine.answer(id, request.answer).await?,
        )))
    }
}

/// A watch: the task's versions as events until its terminal one. When the server shuts
/// down it first sends the versions it has not sent yet (read from the task's history, as
/// a change may still be on its way through Redis), then ends: OK after a terminal
/// version, UNAVAILABLE otherwise (watch again elsewhere). If the client hangs up first
/// and asked for `cancel_on_disconnect`, the task is soft-cancelled.
pub struct WatchStream {
    events: Pin<Box<dyn Stream<Item = Task> + Send>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    engine: Arc<Engine>,
    id: TaskId,
    last_version: u64,
    phase: Phase,
    /// Armed until the task ends or the server ends the stream.
    cancel_on_disconnect: bool,
}

enum Phase {
    Live,
    /// Shutting down: reading the versions not sent yet.
    Flushing(Pin<Box<dyn Future<Output = VecDeque<Task>> + Send>>),
    Draining(VecDeque<Task>),
    Ended,
}

impl WatchStream {
    fn new(
        events: Pin<Box<dyn Stream<Item = Task> + Send>>,
        shutdown: CancellationToken,
        engine: Arc<Engine>,
        id: TaskId,
        cancel_on_disconnect: bool,
    ) -> WatchStream {
        WatchStream {
            events,
            shutdown: Box::pin(shutdown.cancelled_owned()),
            engine,
            id,
            last_version: 0,
            phase: Phase::Live,
            cancel_on_disconnect,
        }
    }

    /// The event for a version, noting that it was sent.
    fn send(&mut self, task: Task) -> Option<Result<pb::TaskEvent, Status>> {
        self.last_version = task.version;
        if task.state.is_terminal() {
            self.cancel_on_disconnect = false;
            self.phase = Phase::Ended;
        }
        Some(Ok(convert::event(&task)))
    }
}

impl Stream for WatchStream {
    type Item = Result<pb::TaskEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match &mut self.phase {
                Phase::Live => match self.events.poll_next_unpin(cx) {
                    Poll::Ready(Some(task)) => return Poll::Ready(self.send(task)),
                    Poll::Ready(None) => {
                        self.phase = Phase::Ended;
                        return Poll::Ready(None);
                    }
                    Poll::Pending => {
                        if self.shutdown.poll_unpin(cx).is_pending() {
                            return Poll::Pending;
                        }
                        self.cancel_on_disconnect = false;
                        let (engine, id, after) =
                            (Arc::clone(&self.engine), self.id, self.last_version);
                        self.phase = Phase::Flushing(Box::pin(async move {
                            engine
                                .store()
                                .history(id, after)
                                .await
                                .ok()
                                .flatten()
                                .unwrap_or_default()
                                .into()
                        }));
                    }
                },
                Phase::Flushing(unsent) => match unsent.poll_unpin(cx) {
                    Poll::Ready(unsent) => self.phase = Phase::Draining(unsent),
                    Poll::Pending => return Poll::Pending,
                },
                Phase::Draining(unsent) => match unsent.pop_front() {
                    Some(task) if task.version > self.last_version => {
                        return Poll::Ready(self.send(task));
                    }
                    Some(_) => {}
                    None => {
                        self.phase = Phase::Ended;
                        return Poll::Ready(Some(Err(Status::unavailable(
                            "the server is shutting down; watch the task again",
                        ))));
                    }
                },
                Phase::Ended => return Poll::Ready(None),
            }
        }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        if self.cancel_on_disconnect {
            let (engine, id) = (Arc::clone(&self.engine), self.id);
            let grace = engine.config().default_grace;
            tracing::info!(task = %id, "watcher disconnected; soft-cancelling the task");
            tokio::spawn(async move {
                let reason = "watcher disconnected".to_owned();
                let _ = engine
                    .cancel(id, CancelRequest::Soft { grace }, reason)
                    .await;
            });
        }
    }
}
