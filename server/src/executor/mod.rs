//! Executors: the code that runs a task. Each built-in kind lives in its own module and
//! implements [`Kind`]: it checks a task's params against its schema ([`Kind::prepare`])
//! and runs the prepared [`Job`] with a [`TaskContext`].
//!
//! A job never sees the store or the engine. It reports through its context (progress,
//! checkpoints, questions), which goes through the narrow [`TaskPort`], and learns about a
//! soft cancel from [`TaskContext::cancel_requested`]; a hard cancel simply drops its
//! future, so a job must release what it holds on drop (the exec kind kills its process
//! tree).

pub(crate) mod exec;
mod params;
pub(crate) mod remote;
mod sleep;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::port::TaskPort;
use crate::task::state_machine::{Fence, Rejection, Report};
use crate::task::{Json, JsonMap, Task, TaskId, TaskState, Usage};

/// A kind of task the server can run.
pub trait Kind: Send + Sync {
    fn name(&self) -> &'static str;

    /// Checks `params` (and any policy, such as the exec allowlist) and returns the job to
    /// run. Called when a task is started, to refuse bad input early, and again when it is
    /// dispatched.
    fn prepare(&self, params: &JsonMap) -> Result<Box<dyn Job>>;
}

pub trait Job: Send {
    fn run(self: Box<Self>, ctx: TaskContext) -> BoxFuture<'static, Outcome>;
}

/// How a job ended by itself.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Completed(Json),
    Failed {
        error: String,
        result: Option<Json>,
    },
    /// Stopped because a soft cancel (or the timeout) asked it to; `Json` says what was done.
    Stopped(Json),
    /// The code running the task is gone (a worker disconnected).
    Lost(String),
}

impl Outcome {
    pub fn into_report(self) -> Report {
        match self {
            Outcome::Completed(result) => Report::Complete { result },
            Outcome::Failed { error, result } => Report::Fail { error, result },
            Outcome::Stopped(result) => Report::Stopped { result },
            Outcome::Lost(error) => Report::Lost { error },
        }
    }
}

/// The kinds this server runs, by name.
#[derive(Clone)]
pub struct Kinds {
    by_name: BTreeMap<&'static str, Arc<dyn Kind>>,
}

impl Kinds {
    /// The built-in kinds; `exec` runs what the operator's `exec` policy allows.
    pub fn builtin(exec_policy: exec::ExecPolicy) -> Kinds {
        let kinds: [Arc<dyn Kind>; 2] = [
            Arc::new(sleep::Sleep),
            Arc::new(exec::Exec::new(exec_policy)),
        ];
        Kinds {
            by_name: kinds.into_iter().map(|kind| (kind.name(), kind)).collect(),
        }
    }

    pub fn get(&self, name: &str) -> Result<&dyn Kind> {
        self.by_name
            .get(name)
            .map(|kind| kind.as_ref())
            .ok_or_else(|| Error::KindUnknown(name.to_owned()))
    }
}

/// The task's record has ended (hard cancel, or another attempt owns it): stop now.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the task has ended")]
pub struct Ended;

/// Why [`TaskContext::ask`] returned without an answer.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Interrupted {
    #[error("a cancel was requested")]
    CancelRequested,
    #[error("the question was not answered in time")]
    AnswerTimedOut,
    #[error(transparent)]
    Ended(#[from] Ended),
}

/// What a running job may do: report progress and checkpoints, ask a question, and learn
/// that it is asked to stop.
pub struct TaskContext {
    port: Arc<dyn TaskPort>,
    task_id: TaskId,
    fence: Fence,
    cancel_requested: CancellationToken,
    /// The latest version of the record the driver has seen.
    record: watch::Receiver<Task>,
    /// The record as the last report stored it, which may be ahead of the driver's (a
    /// report that exhausted a budget comes back with its cancel recorded).
    reported: std::sync::Mutex<Option<Task>>,
}

impl TaskContext {
    pub(crate) fn new(
        port: Arc<dyn TaskPort>,
        task_id: TaskId,
        fence: Fence,
        cancel_requested: CancellationToken,
        record: watch::Receiver<Task>,
    ) -> TaskContext {
        TaskContext {
            port,
            task_id,
            fence,
            cancel_requested,
            record,
            reported: std::sync::Mutex::new(None),
        }
    }

    /// The newest version of the task known here: the driver's, or the last report's.
    pub fn current(&self) -> Task {
        let seen = self.record.borrow().clone();
        let reported = self
            .reported
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match reported.as_ref() {
            Some(task) if task.version > seen.version => task.clone(),
            _ => seen,
        }
    }

    pub(crate) fn record(&self) -> watch::Receiver<Task> {
        self.record.clone()
    }

    pub fn is_cancel_requested(&self) -> bool {
        self.cancel_requested.is_cancelled()
    }

    /// Resolves once a soft cancel (or the timeout) asks the task to stop.
    pub async fn cancel_requested(&self) {
        self.cancel_requested.cancelled().await
    }

    pub async fn progress(&self, fraction: f64, message: impl Into<String>) -> Result<(), Ended> {
        self.report_progress(fraction, message, None, Usage::new())
            .await
            .map(drop)
    }

    /// Records a checkpoint: progress plus one partial result kept even if the task is
    /// cancelled later.
    pub async fn checkpoint(
        &self,
        partial_result: Json,
        fraction: f64,
        message: impl Into<String>,
    ) -> Result<(), Ended> {
        self.report_progress(fraction, message, Some(partial_result), Usage::new())
            .await
            .map(drop)
    }

    /// Records progress, an optional checkpoint, and what was spent since the last report
    /// (added to the task's usage and its ancestors' subtree usage). Returns the record as
    /// stored afterwards; if the report exhausted a budget, its cancel is already recorded
    /// and [`TaskContext::is_cancel_requested`] says so at once.
    pub async fn report_progress(
        &self,
        fraction: f64,
        message: impl Into<String>,
        partial_result: Option<Json>,
        usage: Usage,
    ) -> Result<Task, Ended> {
        self.send(Report::Progress {
            fraction,
            message: message.into(),
            partial_result,
            usage,
        })
        .await
    }

    /// What is left to spend under the budgets of the task and its ancestors.
    pub async fn budget_remaining(&self) -> Usage {
        self.port.budget_remaining(&self.current()).await
    }

    /// Asks a question (WAITING_FOR_ANSWER) and waits for the answer. A soft cancel wakes
    /// the task with [`Interrupted::CancelRequested`]; with a `timeout`, the server resumes
    /// it unanswered after that long ([`Interrupted::AnswerTimedOut`]).
    pub async fn ask(
        &mut self,
        question: impl Into<String>,
        timeout: Option<Duration>,
    ) -> Result<String, Interrupted> {
        let asked = self.pose(question, timeout).await?;
        let mut record = self.record.clone();
        tokio::select! {
            next = record.wait_for(|task| answered(task, asked).is_some()) => match next {
                Ok(task) => match answered(&task, asked) {
                    Some(Ok(Answered { timed_out: true, .. })) => Err(Interrupted::AnswerTimedOut),
                    Some(Ok(Answered { answer, .. })) => Ok(answer),
                    _ => Err(Interrupted::Ended(Ended)),
                },
                Err(_) => Err(Interrupted::Ended(Ended)),
            },
            () = self.cancel_requested.cancelled() => Err(Interrupted::CancelRequested),
        }
    }

    /// Records a question (WAITING_FOR_ANSWER) without waiting for the answer; returns the
    /// version that asked it, for [`TaskContext::answer_to`].
    pub async fn pose(
        &self,
        question: impl Into<String>,
        timeout: Option<Duration>,
    ) -> Result<u64, Interrupted> {
        if self.is_cancel_requested() {
            return Err(Interrupted::CancelRequested);
        }
        let report = Report::Ask {
            question: question.into(),
            timeout,
        };
        match self.port.report(self.task_id, &self.fence, report).await {
            Ok(asked) => Ok(asked.version),
            Err(Rejection::CancelPending) => Err(Interrupted::CancelRequested),
            Err(_) => Err(Interrupted::Ended(Ended)),
        }
    }

    /// The answer to the question asked at version `asked`, once there is one.
    pub fn answer_to(&self, asked: u64) -> Option<Result<Answered, Ended>> {
        answered(&self.record.borrow(), asked)
    }

    /// Stores a report; while the store is unreachable it waits and retries, so no
    /// checkpoint is lost to an outage.
    async fn send(&self, report: Report) -> Result<Task, Ended> {
        let task = self
            .port
            .report(self.task_id, &self.fence, report)
            .await
            .map_err(|_| Ended)?;
        let cancelled = task.cancel.is_some();
        *self
            .reported
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(task.clone());
        if cancelled {
            // Recorded already (a budget this report exhausted): the code learns it now,
            // not when the change comes round through the driver.
            self.cancel_requested.cancel();
        }
        Ok(task)
    }
}

/// How a question was settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answered {
    /// Empty if the question timed out.
    pub answer: String,
    /// Nobody answered before the question's deadline.
    pub timed_out: bool,
}

/// Answered = the first version after the question that is no longer waiting (only
/// AnswerTask moves a waiting task back to RUNNING), so versions the driver skipped cannot
/// hide an answer. `Err` if the task ended instead.
fn answered(task: &Task, asked: u64) -> Option<Result<Answered, Ended>> {
    if task.version <= asked || task.state == TaskState::WaitingForAnswer {
        return None;
    }
    Some(if task.state == TaskState::Running {
        Ok(Answered {
            answer: task.answer.clone(),
            timed_out: task.answer_timed_out,
        })
    } else {
        Err(Ended)
    })
}
