//! The driver of one running task: runs its job and turns every published change of the
//! record into what the code must feel.
//!
//! - a soft cancel (or a timeout) recorded → the job's cancel token fires, and the grace
//!   deadline is armed: past it the driver escalates to a hard cancel;
//! - the record became terminal (hard cancel, escalation, fencing) → the job's future is
//!   dropped at once, which stops its code;
//! - WAITING_FOR_ANSWER → RUNNING → the answer is handed to the job;
//! - the task's timeout passes → the timeout is recorded, which starts the soft → hard
//!   sequence above.

use std::sync::Arc;
use std::time::SystemTime;

use std::panic::AssertUnwindSafe;

use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Slot;
use crate::engine::Engine;
use crate::executor::TaskContext;
use crate::store::Update;
use crate::task::state_machine::{Fence, Report};
use crate::task::{CancelMode, Task, TaskId, TaskState};

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

/// When the driver must act by itself if nothing else happens first.
fn grace_deadline(task: &Task) -> Option<SystemTime> {
    task.cancel
        .as_ref()
        .filter(|cancel| cancel.mode == CancelMode::Soft)
        .and_then(|cancel| cancel.grace_deadline)
}

fn timeout_deadline(task: &Task) -> Option<SystemTime> {
    if task.cancel.is_some() {
        None
    } else {
        task.timeout_at()
    }
}

pub(super) async fn drive(
    engine: Arc<Engine>,
    started: Task,
    slot: Slot,
    stopped: CancellationToken,
) {
    let running = Running {
        engine: Arc::clone(&engine),
        id: started.id,
        _slot: slot,
        _stopped: stopped,
    };
    run(&engine, started).await;
    drop(running);
    // A place is free: start the next queued task.
    engine.dispatch().await;
}

/// While it lives, the task counts as running here; dropping it (even while unwinding from
/// a bug) frees the slot and tells waiters that the code has stopped.
struct Running {
    engine: Arc<Engine>,
    id: TaskId,
    _slot: Slot,
    _stopped: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.engine.supervisor().forget(self.id);
    }
}

async fn run(engine: &Arc<Engine>, started: Task) {
    let id = started.id;
    let fence = Fence {
        owner: started.owner.clone(),
        attempt: started.attempt,
    };
    // Subscribe, then read: every change after the read arrives on `updates`.
    let mut updates = match engine.store().subscribe(id).await {
        Ok(updates) => updates,
        Err(err) => {
            tracing::error!(task = %id, %err, "cannot follow the task; failing it");
            let report = Report::Fail {
                error: format!("the server could not follow the task: {err}"),
                result: None,
            };
            let _ = engine.report(id, &fence, report).await;
            return;
        }
    };
    let mut latest = match engine.store().get(id).await {
        Ok(Some(task)) if !task.state.is_terminal() && task.attempt == fence.attempt => task,
        _ => return,
    };
    let job = match engine
        .kinds()
        .get(&latest.kind)
        .and_then(|kind| kind.prepare(&latest.params))
    {
        Ok(job) => job,
        Err(err) => {
            let report = Report::Fail {
                error: err.to_string(),
                result: None,
            };
            let _ = engine.report(id, &fence, report).await;
            return;
        }
    };
    let cancel_requested = CancellationToken::new();
    let (answers, answers_rx) = mpsc::unbounded_channel();
    let ctx = TaskContext::new(
        Arc::clone(engine),
        id,
        fence.clone(),
        cancel_requested.clone(),
        answers_rx,
    );
    // A job that panics fails its task instead of leaving it RUNNING with nobody driving it.
    let mut work = AssertUnwindSafe(job.run(ctx)).catch_unwind();
    tracing::info!(task = %id, kind = %latest.kind, attempt = fence.attempt, "task running");

    loop {
        if latest.cancel.is_some() {
            cancel_requested.cancel();
        }
        tokio::select! {
            outcome = &mut work => {
                let report = match outcome {
                    Ok(outcome) => outcome.into_report(),
                    Err(_) => Report::Fail { error: "the task's code panicked".to_owned(), result: None },
                };
                let _ = engine.report(id, &fence, report).await;
                return;
            }
            update = updates.next() => {
                let fresh = match update {
                    Some(Update::Changed(task)) => Task::clone(&task),
                    // Behind, or the stream closed early: follow afresh and re-read the
                    // record, which is the truth.
                    other => {
                        if other.is_none() {
                            match engine.store().subscribe(id).await {
                                Ok(resubscribed) => updates = resubscribed,
                                Err(err) => tracing::warn!(task = %id, %err, "cannot follow the task"),
                            }
                        }
                        match engine.store().get(id).await {
                            Ok(Some(task)) => task,
                            Ok(None) => return,
                            Err(_) => continue,
                        }
                    }
                };
                if fresh.version <= latest.version {
                    continue;
                }
                if fresh.state.is_terminal() || fresh.attempt != fence.attempt {
                    // Dropping `work` (on return) stops the code now.
                    return;
                }
                if latest.state == TaskState::WaitingForAnswer && fresh.state == TaskState::Running {
                    let _ = answers.send(fresh.answer.clone());
                }
                latest = fresh;
            }
            () = until(grace_deadline(&latest)) => engine.escalate(id).await,
            () = until(timeout_deadline(&latest)) => engine.time_out(id).await,
        }
    }
}
