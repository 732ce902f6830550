//! Cancelling a task and its whole subtree (see `task::cancel` for the rules).

use std::time::Duration;

use super::Engine;
use super::transitions::{Applied, CancelRequest};
use crate::auth::Caller;
use crate::error::Result;
use crate::task::cancel::CancelOutcome;
use crate::task::{CancelMode, CancelOrigin, Task, TaskId};
use crate::telemetry::metrics::metrics;

/// How long a hard cancel waits for local code to stop before it returns anyway.
const STOP_WAIT: Duration = Duration::from_secs(5);

impl Engine {
    /// Cancels a task and all its active descendants in the same mode. A hard cancel returns
    /// once the task is CANCELLED and its local code has stopped.
    /// Only `caller`'s tenant is touched: the root must be visible to it, and its
    /// descendants are of its tenant (`start` gives a child its parent's tenant).
    pub async fn cancel(
        &self,
        caller: &Caller,
        id: TaskId,
        request: CancelRequest,
        reason: String,
    ) -> Result<(Task, CancelOutcome)> {
        let answered = self.cancel_subtree(caller, id, request, reason).await?;
        let mode = match request {
            CancelRequest::Soft { .. } => CancelMode::Soft,
            CancelRequest::Hard => CancelMode::Hard,
        };
        metrics().cancel_called(mode, answered.1);
        Ok(answered)
    }

    async fn cancel_subtree(
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
        let origin = CancelOrigin {
            replica: self.replica_id().to_owned(),
            trace_context: crate::telemetry::traces::current_context(),
        };
        let (descendants, applied) = self
            .transitions
            .cancel_tree(
                id,
                request.event(reason.clone()),
                request,
                &reason,
                &origin,
                &caller.name,
            )
            .await?;
        let (before, after) = match applied {
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
}
