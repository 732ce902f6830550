//! Adopting the tasks a worker brings along when it moves here from a draining replica
//! (`WorkerHello.running`, after a `WorkerCommand.reconnect`): each task still started in
//! the attempt the worker runs changes owner and worker with one fenced compare-and-set
//! (`Event::Adopt`) and gets a driver here whose job sends no assignment. The previous
//! owner's driver lets go when it sees the new owner; its reports are fenced from then on.
//! The task's code never stops, and its attempt stays the same.

use std::sync::Arc;

use super::Engine;
use super::transitions::Applied;
use crate::executor::remote::{Worker, WorkerSlot};
use crate::supervisor::Placement;
use crate::task::TaskId;
use crate::task::state_machine::Event;

impl Engine {
    /// Takes over the tasks `worker` says it still runs, as `(task, attempt)`. Returns the
    /// ones adopted; the worker stops the others (they ended, went back to the queue, or
    /// are of a kind it does not serve or of another tenant than its principal's).
    pub async fn adopt(&self, worker: &Arc<Worker>, running: Vec<(TaskId, u32)>) -> Vec<TaskId> {
        let mut adopted = Vec::new();
        for (id, attempt) in running {
            let serves = self
                .transitions
                .check(id)
                .await
                .is_ok_and(|task| worker.may_run(&task));
            let Some(slot) = serves.then(|| WorkerSlot::adopted(worker)).flatten() else {
                tracing::warn!(task = %id, worker = %worker.label(), "not adopting a task the worker has no place for, does not serve or is of another tenant");
                continue;
            };
            let event = Event::Adopt {
                owner: self.replica_id().to_owned(),
                worker: worker.label(),
                attempt,
            };
            match self.transitions.apply(id, event).await {
                Ok(Applied::Changed { before, after }) => {
                    tracing::info!(task = %id, attempt, from = %before.owner, worker = %worker.label(), "adopted a task that moved here with its worker");
                    self.places
                        .supervisor
                        .launch(after, Placement::Worker(slot));
                    adopted.push(id);
                }
                Ok(other) => {
                    let task = other.into_current();
                    tracing::info!(task = %id, attempt, state = ?task.state, current_attempt = task.attempt, "not adopting a task that ended or moved on");
                }
                Err(err) => tracing::warn!(task = %id, %err, "cannot adopt a task"),
            }
        }
        adopted
    }
}
