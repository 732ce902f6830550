//! The driver of one running task (a built-in job, or a remote job on a worker): runs its job and turns every change of the record into
//! what the code must feel.
//!
//! - a soft cancel (or a timeout) recorded → the job's cancel token fires, and the grace
//!   deadline is armed: past it the driver escalates to a hard cancel;
//! - the record became terminal (hard cancel, escalation, a lost lease), another attempt
//!   or another replica owns it (requeued, or adopted by the replica its worker moved to)
//!   → the job's future is dropped at once, which stops its code;
//! - the replica is draining and hands the task back ([`Supervisor::hand_back`]) → the
//!   job's cancel token fires; once the code has stopped (or the window is over, then its
//!   future is dropped) the run is reported lost, which puts the task back in the queue.
//!   Code that completes or fails meanwhile is reported as such;
//! - every newer version is shown to the job (an answer reaches a waiting `ask`);
//! - the task's timeout passes → the timeout is recorded, which starts the soft → hard
//!   sequence above.
//!
//! Changes arrive from the supervisor (the replica's control channel); a `Lagged` nudge
//! (reconnect, periodic reconcile) makes the driver re-read the record, which is the truth.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Held, Supervisor};
use crate::executor::{Job, Outcome, TaskContext};
use crate::port::TaskPort;
use crate::store::Update;
use crate::task::state_machine::{Fence, Report};
use crate::task::{CancelInfo, CancelMode, Task, TaskId};
use crate::telemetry::metrics::{Tracked, metrics};
use crate::telemetry::traces::task as traces;

/// Sleeps until `deadline`; never resolves without one.
async fn until(deadline: Option<SystemTime>) {
    match deadline {
        Some(deadline) => {
            let wait = deadline
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(wait).await;
        }
        None => std::future::pending().await,
    }
}

/// When a soft cancel escalates, if one is pending.
fn grace_deadline(task: &Task) -> Option<SystemTime> {
    task.cancel
        .as_ref()
        .filter(|cancel| cancel.mode == CancelMode::Soft)
        .and_then(|cancel| cancel.grace_deadline)
}

/// When the timeout fires, unless a cancel is already under way.
fn timeout_deadline(task: &Task) -> Option<SystemTime> {
    if task.cancel.is_some() {
        None
    } else {
        task.timeout_at()
    }
}

pub(super) async fn drive(
    supervisor: Arc<Supervisor>,
    port: Arc<dyn TaskPort>,
    started: Task,
    job: Box<dyn Job>,
    place: Held,
    told: Told,
    stopped: CancellationToken,
) {
    let _running = Running {
        supervisor,
        id: started.id,
        place: Some(place),
        _stopped: stopped,
        _counted: metrics().running(&started.kind),
    };
    let kind = started.kind.clone();
    // The span of the execution, child of the StartTask call's (`telemetry::traces::task`).
    let span = traces::execution_span(&started);
    // When `run` returns, the job's future has returned or been dropped: the code stopped.
    let ended = run(&port, started, job, told).instrument(span).await;
    if let Some(cancel) = ended.cancel {
        let at = ended.returned_at.unwrap_or_else(SystemTime::now);
        metrics().code_stopped(&kind, &cancel, at);
    }
}

/// What the supervisor tells one driver: the task's changes, and when to hand it back.
pub(super) struct Told {
    pub updates: mpsc::UnboundedReceiver<Update>,
    /// The end of the hand-back window, once asked.
    pub hand_back: watch::Receiver<Option<Instant>>,
    /// The started record is current: the driver was registered before the write that
    /// started the task, so every later change is in `updates` and no first read is needed.
    pub current: bool,
}

/// Why a handed-back run ended, as recorded on the requeued task.
fn handed_back(owner: &str) -> String {
    format!("replica {owner} shut down; the task went back to the queue")
}

/// Sleeps until `deadline`; never resolves without one.
async fn until_instant(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// How the code of a task ended, for `reins_cancel_stop_seconds`.
struct Ended {
    /// The cancel in the last version shown to the job, if any.
    cancel: Option<CancelInfo>,
    /// When the job's future returned; `None` if it was dropped instead (it stopped when
    /// `run` returned).
    returned_at: Option<SystemTime>,
}

impl Ended {
    fn after(record: &watch::Sender<Task>, returned_at: Option<SystemTime>) -> Ended {
        Ended {
            cancel: record.borrow().cancel.clone(),
            returned_at,
        }
    }
}

/// While it lives, the task counts as running here; dropping it (even while unwinding from
/// a bug) frees the place, tells waiters that the code has stopped and that a place is free.
/// It is dropped after the outcome is recorded.
struct Running {
    supervisor: Arc<Supervisor>,
    id: TaskId,
    place: Option<Held>,
    _stopped: CancellationToken,
    /// Counts the task in `reins_tasks_running` while it runs here.
    _counted: Tracked,
}

impl Drop for Running {
    fn drop(&mut self) {
        // The place first: whoever is told that a place is free must find it free.
        drop(self.place.take());
        self.supervisor.forget(self.id);
    }
}

async fn run(port: &Arc<dyn TaskPort>, started: Task, job: Box<dyn Job>, told: Told) -> Ended {
    let Told {
        mut updates,
        mut hand_back,
        current,
    } = told;
    let id = started.id;
    let fence = Fence {
        owner: started.owner.clone(),
        attempt: started.attempt,
    };
    // The supervisor routes changes here from now on; the record read after that
    // registration is the starting point.
    let first_read = if current {
        Ok(Some(started.clone()))
    } else {
        port.read(id).await
    };
    let mut latest = match first_read {
        Ok(Some(current)) if current.state.is_terminal() || current.attempt != fence.attempt => {
            // Cancelled before its code began: it stopped now, as it never runs.
            return Ended {
                cancel: current.cancel,
                returned_at: None,
            };
        }
        Ok(Some(current)) => current,
        _ => started,
    };
    let cancel_requested = CancellationToken::new();
    let (record, record_rx) = watch::channel(latest.clone());
    let ctx = TaskContext::new(
        Arc::clone(port),
        id,
        fence.clone(),
        cancel_requested.clone(),
        record_rx,
    );
    // A job that panics fails its task instead of leaving it RUNNING with nobody driving it.
    let mut work = AssertUnwindSafe(job.run(ctx)).catch_unwind();
    tracing::info!(task = %id, kind = %latest.kind, attempt = fence.attempt, "task running");
    // When a hand-back stops waiting for the code; `None`: no hand-back asked.
    let mut handing_back: Option<Instant> = None;

    loop {
        if latest.cancel.is_some() || handing_back.is_some() {
            cancel_requested.cancel();
        }
        tokio::select! {
            outcome = &mut work => {
                let returned_at = SystemTime::now();
                let report = match outcome {
                    Ok(Outcome::Stopped(_) | Outcome::Lost(_)) if handing_back.is_some() => {
                        Report::Lost { error: handed_back(&fence.owner) }
                    }
                    Ok(outcome) => outcome.into_report(),
                    Err(_) => Report::Fail { error: "the task's code panicked".to_owned(), result: None },
                };
                if let Ok(recorded) = port.report_from(&latest, &fence, report).await {
                    traces::record_changes(&latest, &recorded);
                }
                return Ended::after(&record, Some(returned_at));
            }
            Ok(()) = hand_back.changed(), if handing_back.is_none() => {
                handing_back = *hand_back.borrow_and_update();
            }
            () = until_instant(handing_back) => {
                // The code did not stop in time: stop it now, then give the task back.
                drop(work);
                let _ = port.report(id, &fence, Report::Lost { error: handed_back(&fence.owner) }).await;
                return Ended::after(&record, None);
            }
            Some(update) = updates.recv() => {
                let fresh = match update {
                    Update::Changed(task) => Task::clone(&task),
                    Update::Lagged => match port.read(id).await {
                        Ok(Some(task)) => task,
                        Ok(None) => return Ended::after(&record, None),
                        // The store is unreachable: the next nudge tries again.
                        Err(_) => continue,
                    },
                };
                if absorb(&mut latest, fresh, &fence, &record) == Next::Stop {
                    return Ended::after(&record, None);
                }
            }
            () = until(grace_deadline(&latest)) => {
                let escalated = port.escalate(id).await;
                if settle(&mut latest, escalated, &fence, &record).await == Next::Stop {
                    return Ended::after(&record, None);
                }
            }
            () = until(timeout_deadline(&latest)) => {
                let timed_out = port.time_out(id).await;
                if settle(&mut latest, timed_out, &fence, &record).await == Next::Stop {
                    return Ended::after(&record, None);
                }
            }
            () = until(latest.question_deadline) => {
                let resumed = port.answer_time_out(id).await;
                if settle(&mut latest, resumed, &fence, &record).await == Next::Stop {
                    return Ended::after(&record, None);
                }
            }
        }
    }
}

/// How long a driver waits before acting again on a deadline whose event was not stored.
const RETRY_AFTER: Duration = Duration::from_millis(200);

#[derive(Debug, PartialEq, Eq)]
enum Next {
    Keep,
    /// The task ended or belongs to another attempt: stop the code.
    Stop,
}

/// Takes a newer version of the record into account and shows it to the job.
fn absorb(latest: &mut Task, fresh: Task, fence: &Fence, record: &watch::Sender<Task>) -> Next {
    if fresh.version <= latest.version {
        return Next::Keep;
    }
    traces::record_changes(latest, &fresh);
    // The job sees every newer version, the last one too (a remote job tells its worker
    // why it is aborted).
    record.send_replace(fresh.clone());
    if fresh.state.is_terminal() || fresh.attempt != fence.attempt || fresh.owner != fence.owner {
        return Next::Stop;
    }
    *latest = fresh;
    Next::Keep
}

/// Takes the record a deadline event left behind. If nothing newer came of it (the store
/// was unreachable, or the change is still on its way), waits a little so the deadline
/// does not fire again at once.
async fn settle(
    latest: &mut Task,
    after: Option<Task>,
    fence: &Fence,
    record: &watch::Sender<Task>,
) -> Next {
    match after {
        Some(fresh) if fresh.version > latest.version => absorb(latest, fresh, fence, record),
        _ => {
            tokio::time::sleep(RETRY_AFTER).await;
            Next::Keep
        }
    }
}
