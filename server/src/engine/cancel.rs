//! Cancelling a task and its whole subtree (see `task::cancel` for the rules).

use std::collections::VecDeque;
use std::time::Duration;

use super::Engine;
use super::transitions::{Applied, CancelRequest};
use crate::auth::Caller;
use crate::error::Result;
use crate::task::cancel::{self, CancelOutcome};
use crate::task::{Task, TaskId};

/// How long a hard cancel waits for local code to stop before it returns anyway.
const STOP_WAIT: Duration = Duration::from_secs(5);

impl Engine {
    /// Cancels a task and all its active descendants in the same mode. A hard cancel returns
    /// once the task is CANCELLED and its local code has stopped.
    /// Only `caller`'s tenant is touched: the root must be visible to it, and descendants
    /// of another tenant (which `start` never creates) would be left alone.
    pub async fn cancel(
        &self,
        caller: &Caller,
        id: TaskId,
        request: CancelRequest,
        reason: String,
    ) -> Result<(Task, CancelOutcome)> {
        let root = self.check_as(caller, id).await?;
        if root.state.is_terminal() {
            return Ok((root.clone(), CancelOutcome::of(&root, &root)));
        }
        // Deepest first: when a task ends, its own descendants are already settled with the
        // ancestor's mode and reason, so its end cannot release them as "parent finished".
        let mut descendants = self.active_descendants(id).await?;
        descendants.retain(|task| task.tenant == root.tenant);
        descendants.reverse();
        let descendant_reason = cancel::ancestor_cancelled_reason(id, &reason);
        for descendant in &descendants {
            if let Err(err) = self
                .transitions
                .cancel_one(
                    descendant.id,
                    request,
                    descendant_reason.clone(),
                    &caller.name,
                )
                .await
            {
                tracing::warn!(task = %descendant.id, ancestor = %id, %err, "cancelling a descendant failed");
            }
        }
        let (before, after) = match self
            .transitions
            .cancel_one(id, request, reason, &caller.name)
            .await?
        {
            Applied::Changed { before, after } => (before, after),
            Applied::Unchanged(task) | Applied::Rejected(task, _) => (task.clone(), task),
        };
        if matches!(request, CancelRequest::Hard) {
            for task in descendants.iter().chain([&after]) {
                self.places
                    .supervisor
                    .wait_stopped(task.id, STOP_WAIT)
                    .await;
            }
        }
        Ok((after.clone(), CancelOutcome::of(&before, &after)))
    }

    /// Every active task below `root`, breadth first (parents before children). Finished
    /// tasks are walked through: a detached grandchild may outlive its parent.
    async fn active_descendants(&self, root: TaskId) -> Result<Vec<Task>> {
        let mut found = Vec::new();
        let mut frontier = VecDeque::from([root]);
        while let Some(parent) = frontier.pop_front() {
            for child in self.transitions.records().children(parent).await? {
                frontier.push_back(child.id);
                if !child.state.is_terminal() {
                    found.push(child);
                }
            }
        }
        Ok(found)
    }
}
