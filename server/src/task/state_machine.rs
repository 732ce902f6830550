//! The task state machine: which event may change a task in which state, and how.
//!
//! [`apply`] is a pure function of (record, event, now). It never touches the store or
//! the clock; the engine reads a record, applies an event and compare-and-sets the result,
//! so every transition is atomic and the first terminal transition wins.
//!
//! | state \ event      | Start   | Report*          | Ask     | Answer  | SoftCancel, BudgetExhausted | HardCancel | Escalate† | TimeOut† | AnswerTimeOut† |
//! |--------------------|---------|------------------|---------|---------|-----------------------------|------------|-----------|----------|----------------|
//! | PENDING            | RUNNING | rejected         | rejected| rejected| CANCELLED                   | CANCELLED  | rejected  | rejected | rejected       |
//! | RUNNING            | rejected| per report       | WAITING | rejected| cancel recorded             | CANCELLED  | terminal  | cancel recorded | rejected |
//! | WAITING_FOR_ANSWER | rejected| terminal reports | rejected| RUNNING | cancel recorded             | CANCELLED  | terminal  | cancel recorded | RUNNING, timed out |
//! | terminal           | rejected (terminal states are final)                                                                                    |
//!
//! `BudgetExhausted` is a soft cancel made by the server (reason and `budget_exhausted`
//! name the limit); like `TimeOut` it leaves a cancel already under way alone.
//!
//! `OwnerLost` (the reaper found the owner's lease gone) ends a started task: CANCELLED (or
//! FAILED by timeout) if a cancel was requested, FAILED naming the replica otherwise.
//! `Adopt` (a worker moved off a draining replica) changes a started worker task's owner
//! and worker, keeping its state, attempt and any pending cancel.
//!
//! \* reports come from the task's running code and are fenced by owner and attempt.
//! † only once their deadline has passed.

use std::time::{Duration, SystemTime};

use super::budget::{self, Exhausted};
use super::{CancelInfo, CancelMode, CancelOrigin, CheckpointLimits, Json, Task, TaskState, Usage};

/// Identifies the running code a report comes from. A report whose fence does not match the
/// record (another replica or a later attempt owns the task) is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub owner: String,
    pub attempt: u32,
}

/// What a task's running code tells the server.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// Progress, and optionally a checkpoint appended to `partial_results` (within the
    /// [`CheckpointLimits`]: the oldest are dropped and counted, see `task::checkpoints`).
    Progress {
        fraction: f64,
        message: String,
        partial_result: Option<Json>,
        /// Spent since the last report, added to `usage` and `subtree_usage` (finite,
        /// non-negative: checked where reports enter the server).
        usage: Usage,
    },
    /// The task needs an answer before it can go on; unanswered after `timeout`, it
    /// resumes without one ([`Event::AnswerTimeOut`]).
    Ask {
        question: String,
        timeout: Option<Duration>,
    },
    Complete {
        result: Json,
    },
    Fail {
        error: String,
        result: Option<Json>,
    },
    /// The code stopped because it was asked to (soft cancel or timeout).
    Stopped {
        result: Json,
    },
    /// The code running the task is gone (its worker disconnected): retried if attempts
    /// remain, otherwise FAILED with `error`; CANCELLED if a cancel was requested.
    Lost {
        error: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Replica `owner` starts the task (a new attempt), on `worker` for a worker kind.
    Start {
        owner: String,
        worker: String,
    },
    Report {
        fence: Fence,
        report: Report,
    },
    Answer {
        answer: String,
    },
    /// The grace deadline is `now + grace`, from the same instant as `requested_at`.
    SoftCancel {
        reason: String,
        grace: Duration,
    },
    HardCancel {
        reason: String,
    },
    /// The grace period of a soft cancel ran out: hard-cancel.
    Escalate,
    /// The task's timeout ran out: soft-cancel it, to end FAILED.
    TimeOut {
        grace: Duration,
    },
    /// The task's subtree reached a limit of its budget: the server soft-cancels it.
    BudgetExhausted {
        exhausted: Exhausted,
        grace: Duration,
    },
    /// The open question's deadline passed: the task resumes without an answer.
    AnswerTimeOut,
    /// Replica `owner` stopped holding its lease while running the task: nobody runs it
    /// any more. A requested cancel is honoured; otherwise the task fails.
    OwnerLost {
        owner: String,
    },
    /// A worker moving off a draining replica says it still runs `attempt` of the task:
    /// replica `owner` takes the task over on connection `worker`, same attempt (the
    /// previous owner's reports are fenced from then on). Only a started task of a worker
    /// kind, in that attempt, moves, only to another replica and with the worker of the same
    /// name.
    Adopt {
        owner: String,
        worker: String,
        attempt: u32,
    },
}

/// Why an event does not apply. None of these changes the record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the task is already {0:?}")]
    Terminal(TaskState),
    #[error("the report comes from an owner or attempt that no longer runs the task")]
    Fenced,
    #[error("the task is not waiting for an answer")]
    NotWaiting,
    #[error("the task is not running")]
    NotRunning,
    #[error("a cancel has been requested")]
    CancelPending,
    #[error("the task has already started")]
    AlreadyStarted,
    #[error("the event is not due yet")]
    NotDue,
}

/// Error text of a task whose replica was lost.
pub fn owner_lost_error(owner: &str) -> String {
    format!("replica {owner} was lost while running the task")
}

/// Error text of a task that ran past its timeout.
pub const DEADLINE_EXCEEDED: &str = "deadline exceeded";

/// Applies `event` to `task` at time `now`, with the default [`CheckpointLimits`].
#[cfg(test)]
pub fn apply(task: &Task, event: &Event, now: SystemTime) -> Result<Option<Task>, Rejection> {
    apply_within(task, event, now, CheckpointLimits::DEFAULT)
}

/// Applies `event` to `task` at time `now`; checkpoints are kept within `limits`.
///
/// `Ok(Some(next))` is the changed record (version bumped); `Ok(None)` means the event is
/// harmless and changes nothing (a repeated soft cancel, a late timeout). Cloning the
/// record is O(1) in its checkpoints (they are shared, see `task::checkpoints`).
pub fn apply_within(
    task: &Task,
    event: &Event,
    now: SystemTime,
    limits: CheckpointLimits,
) -> Result<Option<Task>, Rejection> {
    if task.state.is_terminal() {
        return Err(Rejection::Terminal(task.state));
    }
    let mut next = task.clone();
    let changed = match event {
        Event::Start { owner, worker } => start(&mut next, owner, worker, now)?,
        Event::Report { fence, report } => {
            if task.state == TaskState::Pending {
                return Err(Rejection::NotRunning);
            }
            if fence.owner != task.owner || fence.attempt != task.attempt {
                return Err(Rejection::Fenced);
            }
            apply_report(&mut next, report, now, limits)?
        }
        Event::Answer { answer } => {
            if task.state != TaskState::WaitingForAnswer {
                return Err(Rejection::NotWaiting);
            }
            next.state = TaskState::Running;
            next.question.clear();
            next.question_deadline = None;
            next.answer.clone_from(answer);
            next.answer_timed_out = false;
            true
        }
        Event::AnswerTimeOut => {
            if task.state != TaskState::WaitingForAnswer {
                return Err(Rejection::NotWaiting);
            }
            if task.question_deadline.is_none_or(|at| at > now) {
                return Err(Rejection::NotDue);
            }
            next.state = TaskState::Running;
            next.question.clear();
            next.question_deadline = None;
            next.answer.clear();
            next.answer_timed_out = true;
            true
        }
        Event::BudgetExhausted { exhausted, grace } => {
            if task.cancel.is_some() {
                // Already being cancelled: that cancel runs its course.
                false
            } else {
                soft_cancel(&mut next, &exhausted.reason(), deadline(now, *grace), now);
                if let Some(cancel) = next.cancel.as_mut() {
                    cancel.budget_exhausted.clone_from(&exhausted.dimension);
                }
                true
            }
        }
        Event::SoftCancel { reason, grace } => {
            soft_cancel(&mut next, reason, deadline(now, *grace), now)
        }
        Event::HardCancel { reason } => {
            next.cancel = Some(CancelInfo {
                mode: CancelMode::Hard,
                reason: reason.clone(),
                requested_at: now,
                grace_deadline: None,
                escalated: false,
                deadline_exceeded: false,
                origin: CancelOrigin::default(),
                budget_exhausted: String::new(),
                requested_by: String::new(),
            });
            finish_cancelled(&mut next, None, now);
            true
        }
        Event::Escalate => {
            let cancel = next.cancel.as_mut().ok_or(Rejection::NotDue)?;
            match cancel.grace_deadline {
                Some(deadline) if cancel.mode == CancelMode::Soft && deadline <= now => {}
                _ => return Err(Rejection::NotDue),
            }
            cancel.mode = CancelMode::Hard;
            cancel.escalated = true;
            finish_cancelled(&mut next, None, now);
            true
        }
        Event::TimeOut { grace } => {
            match task.timeout_at() {
                Some(at) if at <= now && task.state.is_started() => {}
                _ => return Err(Rejection::NotDue),
            }
            if task.cancel.is_some() {
                // Already being cancelled: that cancel runs its course.
                false
            } else {
                next.cancel = Some(CancelInfo {
                    mode: CancelMode::Soft,
                    reason: DEADLINE_EXCEEDED.to_owned(),
                    requested_at: now,
                    grace_deadline: Some(deadline(now, *grace)),
                    escalated: false,
                    deadline_exceeded: true,
                    origin: CancelOrigin::default(),
                    budget_exhausted: String::new(),
                    requested_by: String::new(),
                });
                true
            }
        }
        Event::OwnerLost { owner } => {
            if !task.state.is_started() {
                return Err(Rejection::NotRunning);
            }
            if *owner != task.owner {
                return Err(Rejection::Fenced);
            }
            lose(&mut next, owner_lost_error(owner), now);
            true
        }
        Event::Adopt {
            owner,
            worker,
            attempt,
        } => {
            if !task.state.is_started() {
                return Err(Rejection::NotRunning);
            }
            // A task moves only to another replica: on its own replica another connection
            // claiming it is not its worker (a draining replica admits no workers).
            // And only with the worker that runs it: the same name (`name/connection`),
            // which a moving worker keeps.
            let same_worker = task.worker.rsplit_once('/').map(|(name, _)| name)
                == worker.rsplit_once('/').map(|(name, _)| name);
            if *attempt != task.attempt
                || task.worker.is_empty()
                || *owner == task.owner
                || !same_worker
            {
                return Err(Rejection::Fenced);
            }
            next.owner.clone_from(owner);
            next.worker.clone_from(worker);
            true
        }
    };
    if !changed {
        return Ok(None);
    }
    next.version += 1;
    next.updated_at = now;
    Ok(Some(next))
}

/// `now + grace`; durations are bounded by [`super::MAX_DURATION`], so this only saturates
/// on a clock already near its end.
fn deadline(now: SystemTime, grace: Duration) -> SystemTime {
    now.checked_add(grace).unwrap_or(now)
}

fn start(next: &mut Task, owner: &str, worker: &str, now: SystemTime) -> Result<bool, Rejection> {
    if next.state != TaskState::Pending {
        return Err(Rejection::AlreadyStarted);
    }
    next.state = TaskState::Running;
    next.owner = owner.to_owned();
    next.worker = worker.to_owned();
    next.attempt += 1;
    next.started_at = Some(now);
    Ok(true)
}

fn apply_report(
    next: &mut Task,
    report: &Report,
    now: SystemTime,
    limits: CheckpointLimits,
) -> Result<bool, Rejection> {
    match report {
        Report::Progress {
            fraction,
            message,
            partial_result,
            usage,
        } => {
            if next.state != TaskState::Running {
                return Err(Rejection::NotRunning);
            }
            // Dimensions beyond the bound are not counted (see `budget::add`).
            let _ = budget::add(&mut next.usage, usage);
            let _ = budget::add(&mut next.subtree_usage, usage);
            next.progress.fraction = fraction.clamp(0.0, 1.0);
            next.progress.message.clone_from(message);
            if let Some(partial) = partial_result {
                next.partial_results_dropped += next.partial_results.push(partial.clone(), limits);
            }
        }
        Report::Ask { question, timeout } => {
            if next.state != TaskState::Running {
                return Err(Rejection::NotRunning);
            }
            if next.cancel.is_some() {
                return Err(Rejection::CancelPending);
            }
            next.state = TaskState::WaitingForAnswer;
            next.question.clone_from(question);
            next.question_deadline = timeout.map(|timeout| deadline(now, timeout));
            next.answer_timed_out = false;
        }
        Report::Complete { result } => {
            // A task that completes while a soft cancel is pending won the race: it is
            // reported honestly as COMPLETED.
            next.result = Some(result.clone());
            finish(next, TaskState::Completed, now);
        }
        Report::Fail { error, result } => {
            next.error.clone_from(error);
            next.result.clone_from(result);
            finish(next, TaskState::Failed, now);
        }
        Report::Lost { error } => lose(next, error.clone(), now),
        Report::Stopped { result } => {
            if next.cancel.is_some() {
                finish_cancelled(next, Some(result.clone()), now);
            } else {
                next.error = "the task stopped without being asked to".to_owned();
                next.result = Some(result.clone());
                finish(next, TaskState::Failed, now);
            }
        }
    }
    Ok(true)
}

/// Records a soft cancel. A task that has not started is cancelled at once; a repeated
/// soft cancel is harmless, except that a shorter grace period shortens the deadline (as a
/// second `kubectl delete --grace-period` does).
fn soft_cancel(next: &mut Task, reason: &str, grace_deadline: SystemTime, now: SystemTime) -> bool {
    if next.state == TaskState::Pending {
        next.cancel = Some(CancelInfo {
            mode: CancelMode::Soft,
            reason: reason.to_owned(),
            requested_at: now,
            grace_deadline: None,
            escalated: false,
            deadline_exceeded: false,
            origin: CancelOrigin::default(),
            budget_exhausted: String::new(),
            requested_by: String::new(),
        });
        finish_cancelled(next, None, now);
        return true;
    }
    match next.cancel.as_mut() {
        Some(existing) => match existing.grace_deadline {
            Some(current) if grace_deadline < current => {
                existing.grace_deadline = Some(grace_deadline);
                true
            }
            _ => false,
        },
        None => {
            next.cancel = Some(CancelInfo {
                mode: CancelMode::Soft,
                reason: reason.to_owned(),
                requested_at: now,
                grace_deadline: Some(grace_deadline),
                escalated: false,
                deadline_exceeded: false,
                origin: CancelOrigin::default(),
                budget_exhausted: String::new(),
                requested_by: String::new(),
            });
            true
        }
    }
}

/// The code running a task is gone. A requested cancel is honoured; with attempts left
/// the task goes back to PENDING (checkpoints kept) for another worker or replica;
/// otherwise it fails with `error`.
fn lose(next: &mut Task, error: String, now: SystemTime) {
    if next.cancel.is_some() {
        finish_cancelled(next, None, now);
    } else if next.attempt < next.max_attempts {
        next.state = TaskState::Pending;
        next.owner.clear();
        next.worker.clear();
        next.question.clear();
        next.question_deadline = None;
        next.started_at = None;
        next.error = error;
    } else {
        next.error = error;
        finish(next, TaskState::Failed, now);
    }
}

/// Ends a task that was cancelled: CANCELLED, or FAILED with "deadline exceeded" when the
/// cancel came from its timeout. Partial results are kept either way.
fn finish_cancelled(next: &mut Task, result: Option<Json>, now: SystemTime) {
    if result.is_some() {
        next.result = result;
    }
    let timed_out = next.cancel.as_ref().is_some_and(|c| c.deadline_exceeded);
    if timed_out {
        next.error = DEADLINE_EXCEEDED.to_owned();
        finish(next, TaskState::Failed, now);
    } else {
        finish(next, TaskState::Cancelled, now);
    }
}

fn finish(next: &mut Task, state: TaskState, now: SystemTime) {
    next.state = state;
    next.finished_at = Some(now);
    next.question.clear();
    next.question_deadline = None;
}

#[cfg(test)]
mod tests;
