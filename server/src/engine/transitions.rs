//! Every change of a task record: read it, decide with the pure state machine, store the
//! result with one compare-and-set, and apply the consequences that reach beyond the task
//! (a requeued task wakes the other replicas; a finished task releases its attached
//! children). Also the [`TaskPort`] that running code reports through, which refuses a
//! report over a limit (`crate::limits`): the task fails naming the limit instead.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::background::{store_backoff, wait};
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::port::TaskPort;
use crate::store::{StoreError, Swap, TaskQueue, TaskRecords};
use crate::task::budget::{self, Spending};
use crate::task::cancel;
use crate::task::state_machine::{self, Event, Fence, Rejection, Report};
use crate::task::{CancelOrigin, CheckpointLimits, Task, TaskId, TaskState, Usage};
use crate::telemetry::metrics::metrics;

/// What a cancel call asks for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CancelRequest {
    Soft { grace: Duration },
    Hard,
}

impl CancelRequest {
    pub fn event(self, reason: String) -> Event {
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
    pub(super) replica_id: String,
    pub(super) records: Arc<dyn TaskRecords>,
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

    /// Grace period of the soft cancels the server itself makes.
    pub fn default_grace(&self) -> Duration {
        self.default_grace
    }

    /// Reads, decides, compare-and-sets; again on a conflict. A change to a terminal state
    /// releases the task's attached children.
    pub async fn apply(&self, id: TaskId, event: Event) -> Result<Applied> {
        Ok(self
            .apply_spending(
                id,
                None,
                event,
                &CancelOrigin::default(),
                &self.replica_id,
                &mut None,
            )
            .await?
            .0)
    }

    /// [`Transitions::apply`] deciding first on `known`, a version of the record the caller
    /// has just read or written, instead of reading it again: the compare-and-set refuses
    /// it if the record moved on since, and then the record is read as usual. One round
    /// trip less for a dispatch that starts the task it just created or listed.
    pub async fn apply_to(&self, known: Task, event: Event) -> Result<Applied> {
        Ok(self
            .apply_spending(
                known.id,
                Some(known),
                event,
                &CancelOrigin::default(),
                &self.replica_id,
                &mut None,
            )
            .await?
            .0)
    }

    /// [`Transitions::apply`], recording `origin` and `by` (`CancelInfo.requested_by`: a
    /// principal, or this replica for the server's own cancels) on a cancel the event
    /// starts; a report that spent something is stored with its usage rolled up to every
    /// ancestor in the same transaction, and the spending of the chain's budgets is
    /// returned with the change.
    ///
    /// `unsettled` is the version and time of a write whose reply was lost (the store
    /// became unreachable while it ran): kept by a caller that retries, so that if the
    /// write landed, the retry finds its own write in the record and does not apply the
    /// event a second time (a checkpoint kept twice, usage counted twice).
    async fn apply_spending(
        &self,
        id: TaskId,
        mut known: Option<Task>,
        event: Event,
        origin: &CancelOrigin,
        by: &str,
        unsettled: &mut Option<(u64, SystemTime)>,
    ) -> Result<(Applied, Vec<Spending>)> {
        let increment = match &event {
            Event::Report {
                report: Report::Progress { usage, .. },
                ..
            } => usage.clone(),
            _ => Usage::new(),
        };
        loop {
            // A decision on `known` that changes nothing is taken again on the stored
            // record: only a compare-and-set proves that `known` is still current.
            let (before, from_known) = match known.take() {
                Some(known) => (known, true),
                None => (self.check(id).await?, false),
            };
            if let Some(tried) = unsettled.take()
                && self.landed(&before, tried).await?
            {
                tracing::info!(task = %id, version = before.version, "a write whose reply was lost had landed");
                let spent = self.spending_of_landed(&before, &increment).await?;
                return Ok((
                    Applied::Changed {
                        before: before.clone(),
                        after: before,
                    },
                    spent,
                ));
            }
            let after = match state_machine::apply_within(
                &before,
                &event,
                SystemTime::now(),
                self.checkpoint_limits,
            ) {
                Ok(Some(mut after)) => {
                    if before.cancel.is_none()
                        && let Some(cancel) = after.cancel.as_mut()
                    {
                        cancel.origin.clone_from(origin);
                        if cancel.requested_by.is_empty() {
                            cancel.requested_by = by.to_owned();
                        }
                    }
                    after
                }
                Ok(None) | Err(_) if from_known => continue,
                Ok(None) => return Ok((Applied::Unchanged(before), Vec::new())),
                Err(rejection) => return Ok((Applied::Rejected(before, rejection), Vec::new())),
            };
            *unsettled = Some((after.version, after.updated_at));
            let (swap, spent) = if increment.is_empty() {
                (self.records.compare_and_swap(&after).await?, Vec::new())
            } else {
                self.records.swap_spending(&after, &increment).await?
            };
            *unsettled = None;
            match swap {
                Swap::Swapped | Swap::SwappedChildless => {
                    metrics().task_changed(&before, &after);
                    if after.state == TaskState::Pending && before.state != TaskState::Pending {
                        // A lost run went back to the queue: any replica with room may take it.
                        if let Err(err) = self.queue.announce_queued().await {
                            tracing::warn!(%err, "cannot announce a requeued task");
                        }
                    }
                    if after.state.is_terminal() {
                        tracing::info!(task = %id, state = ?after.state, "task finished");
                        if matches!(swap, Swap::Swapped) {
                            Box::pin(self.release_children(&after)).await;
                        }
                    }
                    return Ok((Applied::Changed { before, after }, spent));
                }
                Swap::Conflict => {
                    // Either another write won (decide again on the new version) or the
                    // store refused this one outright (fencing): then nothing moved.
                    if self.check(id).await?.version == before.version {
                        tracing::warn!(task = %id, "the store refused a change nothing raced with");
                        metrics().fenced_write();
                        return Ok((Applied::Rejected(before, Rejection::Fenced), Vec::new()));
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
        origin: &CancelOrigin,
        by: &str,
    ) -> Result<Applied> {
        Ok(self
            .apply_spending(id, None, request.event(reason), origin, by, &mut None)
            .await?
            .0)
    }

    /// Cancels every active descendant of `root` (deepest first, with a reason naming
    /// `root`), then `root` itself with `event`. Returns the descendants as they were found
    /// and what the event did to `root`. A finished `root` is walked through as well: a
    /// detached descendant may outlive it.
    pub async fn cancel_tree(
        &self,
        root: TaskId,
        event: Event,
        request: CancelRequest,
        reason: &str,
        origin: &CancelOrigin,
        by: &str,
    ) -> Result<(Vec<Task>, Applied)> {
        // Deepest first: when a task ends, its own descendants are already settled with the
        // ancestor's mode and reason, so its end cannot release them as "parent finished".
        let mut descendants = self.active_descendants(root).await?;
        descendants.reverse();
        let descendant_reason = cancel::ancestor_cancelled_reason(root, reason);
        for descendant in &descendants {
            if let Err(err) = self
                .cancel_one(
                    descendant.id,
                    request,
                    descendant_reason.clone(),
                    origin,
                    by,
                )
                .await
            {
                tracing::warn!(task = %descendant.id, ancestor = %root, %err, "cancelling a descendant failed");
            }
        }
        let (applied, _) = self
            .apply_spending(root, None, event, origin, by, &mut None)
            .await?;
        Ok((descendants, applied))
    }

    /// Every active task below `root`, breadth first (parents before children). Finished
    /// tasks are walked through: a detached grandchild may outlive its parent.
    async fn active_descendants(&self, root: TaskId) -> Result<Vec<Task>> {
        let mut found = Vec::new();
        let mut frontier = VecDeque::from([root]);
        while let Some(parent) = frontier.pop_front() {
            for child in self.records.children(parent).await? {
                frontier.push_back(child.id);
                if !child.state.is_terminal() {
                    found.push(child);
                }
            }
        }
        Ok(found)
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
                .cancel_one(
                    child.id,
                    request,
                    reason,
                    &CancelOrigin::default(),
                    &self.replica_id,
                )
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
        known: Option<Task>,
        fence: &Fence,
        report: Report,
        unsettled: &mut Option<(u64, SystemTime)>,
    ) -> Result<(Task, Vec<Spending>), ReportError> {
        let event = Event::Report {
            fence: fence.clone(),
            report,
        };
        match self
            .apply_spending(
                id,
                known,
                event,
                &CancelOrigin::default(),
                &self.replica_id,
                unsettled,
            )
            .await
        {
            Ok((Applied::Changed { after: task, .. } | Applied::Unchanged(task), spent)) => {
                Ok((task, spent))
            }
            Ok((Applied::Rejected(_, rejection), _)) => Err(ReportError::Rejected(rejection)),
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
        self.report_known(id, None, fence, report).await
    }

    async fn report_from(
        &self,
        latest: &Task,
        fence: &Fence,
        report: Report,
    ) -> Result<Task, Rejection> {
        self.report_known(latest.id, Some(latest.clone()), fence, report)
            .await
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

    async fn answer_time_out(&self, id: TaskId) -> Option<Task> {
        self.apply_deadline(id, Event::AnswerTimeOut).await
    }

    async fn budget_remaining(&self, task: &Task) -> Usage {
        let chain: Vec<TaskId> = std::iter::once(task.id)
            .chain(task.ancestors.iter().copied())
            .collect();
        match self.records.spending(&chain).await {
            Ok(spent) => budget::remaining(spent.iter().map(|s| (&s.budget, &s.after))),
            Err(err) => {
                tracing::warn!(task = %task.id, %err, "cannot read the budgets left");
                Usage::new()
            }
        }
    }
}

impl Transitions {
    /// [`TaskPort::report`], deciding first on `known` (see [`Transitions::apply_to`]);
    /// a retry after an outage reads the record again.
    async fn report_known(
        &self,
        id: TaskId,
        mut known: Option<Task>,
        fence: &Fence,
        report: Report,
    ) -> Result<Task, Rejection> {
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
        // A retried report must not be applied on top of itself.
        let mut unsettled = None;
        loop {
            match self
                .report_once(id, known.take(), fence, report.clone(), &mut unsettled)
                .await
            {
                Ok((task, _)) if over_limit.is_some() => {
                    return Err(Rejection::Terminal(task.state));
                }
                Ok((task, spent)) if spent.is_empty() => return Ok(task),
                Ok((task, spent)) => return Ok(self.enforce_budgets(task, &spent).await),
                Err(ReportError::Rejected(rejection)) => return Err(rejection),
                Err(ReportError::Unavailable) => wait(&mut backoff).await,
            }
        }
    }
}
