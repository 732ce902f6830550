//! Writes whose reply was lost: the store became unreachable while a compare-and-set ran,
//! so the caller cannot tell whether it landed. A retried report checks the record for its
//! own write before deciding again, so a report is never applied on top of itself.

use std::time::SystemTime;

use super::transitions::Transitions;
use crate::error::Result;
use crate::task::budget::Spending;
use crate::task::{Task, TaskId, Usage};

impl Transitions {
    /// Whether the write of version `tried.0` made at `tried.1` is in the record: it is
    /// `current`, or (another change came after it) in its history.
    pub(super) async fn landed(
        &self,
        current: &Task,
        (version, at): (u64, SystemTime),
    ) -> Result<bool> {
        if current.version < version {
            return Ok(false);
        }
        if current.version == version {
            return Ok(current.updated_at == at);
        }
        let later = self.records.history(current.id, version - 1).await?;
        Ok(later
            .and_then(|versions| versions.into_iter().find(|task| task.version == version))
            .is_some_and(|task| task.updated_at == at))
    }

    /// The spending of a report whose write landed but whose reply was lost: the chain's
    /// budgets now, each as if this report's `increment` had just been added (so a limit it
    /// crossed is still acted on).
    pub(super) async fn spending_of_landed(
        &self,
        task: &Task,
        increment: &Usage,
    ) -> Result<Vec<Spending>> {
        if increment.is_empty() {
            return Ok(Vec::new());
        }
        let chain: Vec<TaskId> = std::iter::once(task.id)
            .chain(task.ancestors.iter().copied())
            .collect();
        Ok(self
            .records
            .spending(&chain)
            .await?
            .into_iter()
            .map(|now| {
                let before: Usage = now
                    .after
                    .iter()
                    .map(|(dimension, used)| {
                        let added = increment.get(dimension).copied().unwrap_or(0.0);
                        (dimension.clone(), used - added)
                    })
                    .collect();
                Spending::new(now.task, &now.budget, &before, &now.after)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
