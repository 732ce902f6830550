//! CancelTasks: cancel every active task matching a filter, each with its subtree.
//!
//! - The matching tasks are those active when the call starts: their ids are read first
//!   (page by page over the store's indexes), then each is cancelled as SoftCancel or
//!   HardCancel would (atomically, with its subtree), a bounded number at a time: all the
//!   PENDING ones first, then the started ones — each started task that stops frees a
//!   place, and a queued task of the same call must not be started in it meanwhile.
//! - A call filtering by session alone marks the session cancelled first (for
//!   `--cancelled-session-ttl`): a StartTask in it from then on is refused, and any task
//!   created before the mark is already in the index that is read after it, so none slips
//!   through.
//! - A dry run only reads.

use crate::auth::Caller;
use futures_util::StreamExt;

use super::Engine;
use super::transitions::CancelRequest;
use crate::error::Result;
use crate::store::ActiveFilter;
use crate::task::cancel::CancelOutcome;
use crate::task::{TaskId, TaskState};

/// How many tasks one call lists per store read.
const PAGE: usize = 1000;
/// How many tasks one call cancels at once.
const CONCURRENCY: usize = 32;
/// How many ids a reply lists at most.
pub const MAX_LISTED_IDS: usize = 1000;

/// What a CancelTasks call did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BulkCancel {
    pub matched: usize,
    pub cancelled: usize,
    pub requested: usize,
    pub already_finished: usize,
    /// The first [`MAX_LISTED_IDS`] matched ids, in creation order.
    pub task_ids: Vec<TaskId>,
}

impl BulkCancel {
    fn count(&mut self, outcome: CancelOutcome) {
        match outcome {
            CancelOutcome::Cancelled => self.cancelled += 1,
            CancelOutcome::Requested => self.requested += 1,
            CancelOutcome::AlreadyCancelled | CancelOutcome::AlreadyFinished => {
                self.already_finished += 1
            }
        }
    }
}

/// Whether a filter names the session and nothing else: a cancel of it is "the user
/// pressed Stop" for the whole session, which also refuses the session's late starts.
pub fn is_whole_session(filter: &ActiveFilter) -> bool {
    filter.session_id.is_some()
        && filter.kind.is_none()
        && filter.parent_id.is_none()
        && filter.labels.is_empty()
}

impl Engine {
    /// The filter is scoped to `caller`'s tenant (every tenant for an admin); each cancel
    /// is `caller`'s. A whole-session cancel marks the session in `caller`'s tenant.
    pub async fn cancel_tasks(
        &self,
        caller: &Caller,
        filter: &ActiveFilter,
        request: CancelRequest,
        reason: String,
        dry_run: bool,
    ) -> Result<BulkCancel> {
        if !dry_run
            && is_whole_session(filter)
            && let Some(session) = &filter.session_id
        {
            self.transitions
                .records()
                .cancel_session(&caller.tenant, session, self.config.cancelled_session_ttl)
                .await?;
        }
        let matched = self.matching(filter).await?;
        let mut done = BulkCancel {
            matched: matched.len(),
            task_ids: matched
                .iter()
                .take(MAX_LISTED_IDS)
                .map(|(id, _)| *id)
                .collect(),
            ..BulkCancel::default()
        };
        if dry_run {
            return Ok(done);
        }
        let (pending, started): (Vec<_>, Vec<_>) = matched
            .into_iter()
            .partition(|(_, state)| *state == TaskState::Pending);
        // Every queued task first, then the started ones (see the module docs).
        for phase in [pending, started] {
            let ids = phase.into_iter().map(|(id, _)| id);
            self.cancel_each(caller, ids, request, &reason, &mut done)
                .await?;
        }
        Ok(done)
    }

    /// Cancels each of `ids` with its subtree, [`CONCURRENCY`] at a time, counting the
    /// outcomes into `done`.
    async fn cancel_each(
        &self,
        caller: &Caller,
        ids: impl Iterator<Item = TaskId>,
        request: CancelRequest,
        reason: &str,
        done: &mut BulkCancel,
    ) -> Result<()> {
        let mut cancels = futures_util::stream::iter(ids)
            .map(|id| async move {
                let cancelled = self.cancel(caller, id, request, reason.to_owned()).await;
                (id, cancelled)
            })
            .buffer_unordered(CONCURRENCY);
        while let Some((id, result)) = cancels.next().await {
            match result {
                Ok((_, outcome)) => done.count(outcome),
                // Gone past its retention since it was listed: it had finished.
                Err(crate::error::Error::TaskNotFound(_)) => done.already_finished += 1,
                Err(err) => {
                    tracing::warn!(task = %id, %err, "a bulk cancel could not cancel a task");
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// The active tasks matching `filter` now (id and state), in creation order.
    async fn matching(&self, filter: &ActiveFilter) -> Result<Vec<(TaskId, TaskState)>> {
        let mut ids = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .transitions
                .records()
                .list_active(filter, after, PAGE)
                .await?;
            ids.extend(page.iter().map(|task| (task.id, task.state)));
            match page.last() {
                Some(last) if page.len() == PAGE => after = Some(last.id),
                _ => return Ok(ids),
            }
        }
    }
}
