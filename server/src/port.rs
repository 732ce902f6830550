//! The narrow port between a task's running code and the rest of the server.
//!
//! The supervisor's drivers and the executors' jobs see a task only through [`TaskPort`]:
//! read the record, store a report under the run's fence, and record the two deadline
//! events a driver owns (escalation, timeout). They cannot start, cancel or list tasks,
//! and they never see the store: the engine implements the port, so every change still
//! goes through the state machine and one compare-and-set.

use async_trait::async_trait;

use crate::store::StoreError;
use crate::task::state_machine::{Fence, Rejection, Report};
use crate::task::{Task, TaskId, Usage};

#[async_trait]
pub(crate) trait TaskPort: Send + Sync + 'static {
    /// The task as stored; `None` once it is gone.
    async fn read(&self, id: TaskId) -> Result<Option<Task>, StoreError>;

    /// Stores a report of the run identified by `fence`, retrying while the store is
    /// unreachable, so no result is lost to an outage. Returns the stored record, or why
    /// the report was refused (the task ended, or another run owns it): the code must stop.
    async fn report(&self, id: TaskId, fence: &Fence, report: Report) -> Result<Task, Rejection>;

    /// [`TaskPort::report`] when the caller holds `latest`, a version of the record it
    /// read or was sent: the report may be decided on it without reading the record again
    /// (the store still refuses it if the record moved on).
    async fn report_from(
        &self,
        latest: &Task,
        fence: &Fence,
        report: Report,
    ) -> Result<Task, Rejection> {
        self.report(latest.id, fence, report).await
    }

    /// The grace period of a soft cancel ran out. Returns the record after the attempt,
    /// `None` if the store could not be reached.
    async fn escalate(&self, id: TaskId) -> Option<Task>;

    /// The task ran past its timeout. Returns the record after the attempt, `None` if the
    /// store could not be reached.
    async fn time_out(&self, id: TaskId) -> Option<Task>;

    /// The open question's deadline passed: the task resumes without an answer. Returns
    /// the record after the attempt, `None` if the store could not be reached.
    async fn answer_time_out(&self, id: TaskId) -> Option<Task>;

    /// What is left to spend under the budgets of `task` and its ancestors: per
    /// dimension, the tightest remaining amount (empty if none has a budget, or the store
    /// could not be reached).
    async fn budget_remaining(&self, task: &Task) -> Usage;
}
