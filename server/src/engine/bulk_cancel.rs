//! CancelTasks: cancel every active task matching a filter, each with its subtree.
//!
//! - The matching tasks are those active when the call starts: their ids are read first
//!   (page by page over the store's indexes), then each is cancelled as SoftCancel or
//!   HardCancel would (atomically, with its subtree), a bounded number at a time.
//! - A call filtering by session alone marks the session cancelled first (for
//!   `--cancelled-session-ttl`): a StartTask in it from then on is refused, and any task
//!   created before the mark is already in the index that is read after it, so none slips
//!   through.
//! - A dry run only reads.

use futures_util::StreamExt;

use super::Engine;
use super::transitions::CancelRequest;
use crate::error::Result;
use crate::store::ActiveFilter;
use crate::task::TaskId;
use crate::task::cancel::CancelOutcome;

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
    pub async fn cancel_tasks(
        &self,
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
                .cancel_session(session, self.config.cancelled_session_ttl)
                .await?;
        }
        let ids = self.matching(filter).await?;
        let mut done = BulkCancel {
            matched: ids.len(),
            task_ids: ids.iter().take(MAX_LISTED_IDS).copied().collect(),
            ..BulkCancel::default()
        };
        if dry_run {
            return Ok(done);
        }
        let mut cancels = futures_util::stream::iter(ids)
            .map(|id| {
                let reason = reason.clone();
                async move { (id, self.cancel(id, request, reason).await) }
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
        Ok(done)
    }

    /// The ids of the active tasks matching `filter` now, in creation order.
    async fn matching(&self, filter: &ActiveFilter) -> Result<Vec<TaskId>> {
        let mut ids = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .transitions
                .records()
                .list_active(filter, after, PAGE)
                .await?;
            ids.extend(page.iter().map(|task| task.id));
            match page.last() {
                Some(last) if page.len() == PAGE => after = Some(last.id),
                _ => return Ok(ids),
            }
        }
    }
}
