//! Every change of a task record: read it, decide with the pure state machine, store the
//! result with one compare-and-set, and apply the consequences that reach beyond the task
//! (a requeued task wakes the other replicas; a finished task releases its attached
//! children). Also the [`TaskPort`] that running code reports through, which refuses a
//! report over a limit (`crate::limits`): the task fails naming the limit instead.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::background::{store_backoff, wait};
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::port::TaskPort;
use crate::store::{StoreError, Swap, TaskQueue, TaskRecords};
use crate::task::cancel;
use crate::task::state_machine::{self, Event, Fence, Rejection, Report};
use crate::task::{CheckpointLimits, Task, TaskId, TaskState};

/// What a cancel call asks for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CancelRequest {
    Soft { grace: Duration },
    Hard,
}

impl CancelRequest {
    fn event(self, reason: String) -> Event {
        match self {
            CancelRequest::Soft { grace } => Event::SoftCancel { reason, grace },
            CancelRequest::Hard => Event::HardCancel { reason },
        }
    }
}

/// The result of one event on one task. Short-lived, so the records are not boxed.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Applied {
    Changed { before: Task, after: Task },
    Unchanged(Task),
    Rejected(Task, Rejection),
}

impl Applied {
    /// The record as it stands after the event, whatever the event did.
    pub fn into_current(self) -> Task {
        match self {
            Applied::Changed { after: task, .. }
            | Applied::Unchanged(task)
            | Applied::Rejected(task, _) => task,
        }
    }
}

pub(crate) struct Transitions {
    /// This replica: recorded as who asked for the cancels the server makes itself.
    replica_id: String,
    records: Arc<dyn TaskRecords>,
    queue: Arc<dyn TaskQueue>,
    /// Grace period of the soft cancels the server itself makes (parent finished, timeout).
    default_grace: Duration,
    /// What a report may carry.
    limits: Limits,
    /// `--max-checkpoints` / `--max-checkpoint-bytes`, applied to every report.
    checkpoint_limits: CheckpointLimits,
}

impl Transitions {
    pub fn new(
        replica_id: String,
        records: Arc<dyn TaskRecords>,
        queue: Arc<dyn TaskQueue>,
        default_grace: Duration,
        limits: Limits,
        checkpoint_limits: CheckpointLimits,
    ) -> Transitions {
        Transitions {
            replica_id,
            records,
            queue,
            default_grace,
            limits,
            checkpoint_limits,
        }
    }

    pub fn records(&self) -> &dyn TaskRecords {
        self.records.as_ref()
    }

    pub fn records_handle(&self) -> &Arc<dyn TaskRecords> {
        &self.records
    }

    pub async fn check(&self, id: TaskId) -> Result<Task> {
        self.records.get(id).await?.ok_or(Error::TaskNotFound(id))
    }

    /// Reads, decides, compare-and-sets; again on a conflict. A change to a terminal state
    /// releases the task's attached children.
    pub async fn apply(&self, id: TaskId, event: Event) -> Result<Applied> {
        self.apply_by(id, event, &self.replica_id).await
    }

    /// [`Transitions::apply`] on behalf of `by`, recorded as `CancelInfo.requested_by` when
    /// the event starts a cancel.
    pub async fn apply_by(&self, id: TaskId, event: Event, by: &str) -> Result<Applied> {
        loop {
            let before = self.check(id).await?;
            let after = match state_machine::apply_within(
                &before,
                &event,
                SystemTime::now(),
                self.checkpoint_limits,
            ) {
                Ok(Some(mut after)) => {
                    if let Some(cancel) = &mut after.cancel
                        && cancel.requested_by.is_empty()
                    {
                        cancel.requested_by = by.to_owned();
                    }
                    after
                }
                Ok(None) => return Ok(Applied::Unchanged(before)),
                Err(rejection) => return Ok(Applied::Rejected(before, rejection)),
            };
            match self.records.compare_and_swap(&after).await? {
                Swap::Swapped => {
                    if after.state == TaskState::Pending && before.state != TaskState::Pending {
                        // A lost run went back to the queue: any replica with room may take it.
                        if let Err(err) = self.queue.announce_queued().await {
                            tracing::warn!(%err, "cannot announce a requeued task");
                        }
                    }
                    if after.state.is_terminal() {
                        tracing::info!(task = %id, state = ?after.state, "task finished");
                        Box::pin(self.release_children(&after)).await;
                    }
                    return Ok(Applied::Changed { before, after });
                }
                Swap::Conflict => {
                    // Either another write won (decide again on the new version) or the
                    // store refused this one outright (fencing): then nothing moved.
                    if self.check(id).await?.version == before.version {
                        tracing::warn!(task = %id, "the store refused a change nothing raced with");
                        return Ok(Applied::Rejected(before, Rejection::Fenced));
                    }
                }
                Swap::Missing => return Err(Error::TaskNotFound(id)),
            }
        }
    }

    /// Cancels one task (not its subtree) in the mode asked for.
    pub async fn cancel_one(
        &self,
        id: TaskId,
        request: CancelRequest,
        reason: String,
        by: &str,
    ) -> Result<Applied> {
        self.apply_by(id, request.event(reason), by).await
    }

    /// Soft-cancels the active attached children of a task that has finished.
    async fn release_children(&self, parent: &Task) {
        let children = match self.records.children(parent.id).await {
            Ok(children) => children,
            Err(err) => {
                tracing::warn!(task = %parent.id, %err, "cannot release the children of a finished task");
                return;
            }
        };
        let request = CancelRequest::Soft {
            grace: self.default_grace,
        };
        for child in children
            .iter()
            .filter(|child| cancel::released_when_parent_finishes(child))
        {
            let reason = cancel::parent_finished_reason(parent.id);
            if let Err(err) = self
                .cancel_one(child.id, request, reason, &self.replica_id)
                .await
            {
                tracing::warn!(task = %child.id, %err, "releasing a child failed");
            }
        }
    }

    /// Applies a report once; `Unavailable` if the store could not be reached.
    async fn report_once(
        &self,
        id: TaskId,
        fence: &Fence,
        report: Report,
    ) -> Result<Task, ReportError> {
        let event = Event::Report {
            fence: fence.clone(),
            report,
        };
        match self.apply(id, event).await {
            Ok(Applied::Changed { after: task, .. } | Applied::Unchanged(task)) => Ok(task),
            Ok(Applied::Rejected(_, rejection)) => Err(ReportError::Rejected(rejection)),
            Err(Error::TaskNotFound(_)) => Err(ReportError::Rejected(Rejection::Fenced)),
            Err(err) => {
                tracing::warn!(task = %id, %err, "a report could not be stored yet");
                Err(ReportError::Unavailable)
            }
        }
    }

    /// Applies a deadline event; `None` if the store could not be reached.
    async fn apply_deadline(&self, id: TaskId, event: Event) -> Option<Task> {
        match self.apply(id, event).await {
            Ok(applied) => Some(applied.into_current()),
            Err(err) => {
                tracing::warn!(task = %id, %err, "a deadline could not be stored yet");
                None
            }
        }
    }
}

/// Why a report was not stored.
enum ReportError {
    /// Refused: the task ended or is fenced. The code must stop.
    Rejected(Rejection),
    /// The store could not be reached; the report may be retried.
    Unavailable,
}

#[async_trait]
impl TaskPort for Transitions {
    async fn read(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        self.records.get(id).await
    }

    async fn report(&self, id: TaskId, fence: &Fence, report: Report) -> Result<Task, Rejection> {
        // A report over a limit is not stored: the task fails naming the limit, and the
        // code is told that the task has ended.
        let over_limit = self.limits.report_violation(&report);
        let report = match &over_limit {
            Some(error) => {
                tracing::warn!(task = %id, %error, "a report over a limit; failing the task");
                Report::Fail {
                    error: error.clone(),
                    result: None,
                }
            }
            None => report,
        };
        let mut backoff = store_backoff();
        loop {
            match self.report_once(id, fence, report.clone()).await {
                Ok(task) if over_limit.is_some() => {
                    return Err(Rejection::Terminal(task.state));
                }
                Ok(task) => return Ok(task),
                Err(ReportError::Rejected(rejection)) => return Err(rejection),
                Err(ReportError::Unavailable) => wait(&mut backoff).await,
            }
        }
    }

    async fn escalate(&self, id: TaskId) -> Option<Task> {
        self.apply_deadline(id, Event::Escalate).await
    }

    async fn time_out(&self, id: TaskId) -> Option<Task> {
        let event = Event::TimeOut {
            grace: self.default_grace,
        };
        self.apply_deadline(id, event).await
    }
}
