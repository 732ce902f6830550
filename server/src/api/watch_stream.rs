//! The WatchTask (and RunTask) stream: versions as events until the terminal one, a clean
//! end on shutdown, and the call's tie to the task (`cancel_on_disconnect`, see
//! [`super::ties`]). An event's task is the version's shared encoding in the watch's view
//! ([`Published::event`]): nothing is converted or encoded per watcher.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{FutureExt, Stream, StreamExt};
use reins_proto::encoded::EncodedTaskEvent;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;

use super::ties::Tie;
use crate::convert::View;
use crate::engine::{Engine, Held};
use crate::store::Published;
use crate::task::{Task, TaskId};
use crate::telemetry::metrics::{Tracked, metrics};

/// A watch: the task's versions as events until its terminal one. When the server shuts
/// down it first sends the versions it has not sent yet (read from the task's history, as
/// a change may still be on its way through Redis), then ends: OK after a terminal
/// version, UNAVAILABLE otherwise (watch again elsewhere). If the client hangs up first
/// and the call is tied to the task, dropping the tie may cancel it ([`super::ties`]).
pub(crate) struct WatchStream {
    events: Pin<Box<dyn Stream<Item = Arc<Published>> + Send>>,
    /// The watch's place among its tenant's `max_watchers`, given back with the stream.
    _held: Option<Held>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    engine: Arc<Engine>,
    id: TaskId,
    last_version: u64,
    phase: Phase,
    /// Held until the task ends or the server ends the stream.
    tie: Option<Tie>,
    /// The view of the task in each event.
    view: View,
    /// Counts the stream in `reins_watchers` while it is open.
    _counted: Tracked,
}

enum Phase {
    Live,
    /// Shutting down: reading the versions not sent yet.
    Flushing(Pin<Box<dyn Future<Output = VecDeque<Task>> + Send>>),
    Draining(VecDeque<Task>),
    Ended,
}

impl WatchStream {
    pub fn new(
        events: Pin<Box<dyn Stream<Item = Arc<Published>> + Send>>,
        shutdown: CancellationToken,
        engine: Arc<Engine>,
        id: TaskId,
        tie: Option<Tie>,
        view: View,
    ) -> WatchStream {
        WatchStream {
            events,
            _held: None,
            shutdown: Box::pin(shutdown.cancelled_owned()),
            engine,
            id,
            last_version: 0,
            phase: Phase::Live,
            tie,
            view,
            _counted: metrics().watching(),
        }
    }

    /// The stream holds `held` (its place among the tenant's `max_watchers`) until it ends.
    pub fn holding(mut self, held: Option<Held>) -> WatchStream {
        self._held = held;
        self
    }

    /// The event for a version, noting that it was sent.
    fn send(&mut self, version: &Published) -> Option<Result<EncodedTaskEvent, Status>> {
        self.last_version = version.version;
        if version.state.is_terminal() {
            self.release();
            self.phase = Phase::Ended;
        }
        Some(Ok(version.event(self.view)))
    }

    /// The stream leaves the task alone from now on.
    fn release(&mut self) {
        if let Some(tie) = self.tie.take() {
            tie.release();
        }
    }
}

impl Stream for WatchStream {
    type Item = Result<EncodedTaskEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match &mut self.phase {
                Phase::Live => match self.events.poll_next_unpin(cx) {
                    Poll::Ready(Some(version)) => return Poll::Ready(self.send(&version)),
                    Poll::Ready(None) => {
                        self.phase = Phase::Ended;
                        return Poll::Ready(None);
                    }
                    Poll::Pending => {
                        if self.shutdown.poll_unpin(cx).is_pending() {
                            return Poll::Pending;
                        }
                        self.release();
                        let (engine, id, after) =
                            (Arc::clone(&self.engine), self.id, self.last_version);
                        self.phase = Phase::Flushing(Box::pin(async move {
                            engine
                                .versions_after(id, after)
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
                        return Poll::Ready(self.send(&Published::new(task)));
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
