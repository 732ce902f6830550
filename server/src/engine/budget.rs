//! Budget enforcement: what the server does after a usage report was rolled up (see
//! `task::budget`).
//!
//! - The report that makes a task's subtree reach a limit of the task's budget (exactly
//!   one does, however many race: the roll-up is atomic) soft-cancels that task and its
//!   whole subtree, with `--default-grace`; the task's cancel names the limit.
//! - A report made under a task whose budget was already exhausted (a descendant started
//!   just before the limit was reached, which the subtree cancel did not see yet)
//!   soft-cancels the reporting task and its subtree.

use super::transitions::{CancelRequest, Transitions};
use crate::task::budget::{Exhausted, Spending};
use crate::task::state_machine::Event;
use crate::task::{CancelOrigin, Task, TaskId};

impl Transitions {
    /// Applies the budget rules to the chain a report by `reporter` was rolled up to, and
    /// returns the reporter's record as it stands afterwards (with its cancel, if any).
    pub(super) async fn enforce_budgets(&self, reporter: Task, spent: &[Spending]) -> Task {
        let mut acted = false;
        for spending in spent {
            if let Some(exhausted) = spending.crossed() {
                tracing::info!(task = %spending.task, reason = %exhausted.reason(), "budget exhausted; cancelling the subtree");
                self.stop(spending.task, exhausted).await;
                acted = true;
            }
        }
        // Spending under a budget exhausted before (which a subtree cancel will not reach
        // again): the reporter stops, once, whichever ancestor it was.
        if let Some(exhausted) = spent.iter().find_map(Spending::exhausted_before) {
            tracing::info!(task = %reporter.id, "spending under an exhausted budget; cancelling the task");
            self.stop(reporter.id, exhausted).await;
            acted = true;
        }
        if !acted {
            return reporter;
        }
        match self.check(reporter.id).await {
            Ok(task) => task,
            Err(_) => reporter,
        }
    }

    /// Soft-cancels `root` (the cancel names the budget's limit) and its subtree.
    async fn stop(&self, root: TaskId, exhausted: Exhausted) {
        let grace = self.default_grace();
        let reason = exhausted.reason();
        let event = Event::BudgetExhausted { exhausted, grace };
        if let Err(err) = self
            .cancel_tree(
                root,
                event,
                CancelRequest::Soft { grace },
                &reason,
                &CancelOrigin::default(),
                &self.replica_id,
            )
            .await
        {
            tracing::warn!(task = %root, %err, "cancelling an exhausted budget's subtree failed");
        }
    }
}
