//! StartTask: the kind and parent rules, idempotency on `request_id`, and the first
//! placement of a new task.

use super::Engine;
use crate::error::{Error, Result};
use crate::store::Created;
use crate::task::budget::{self, MAX_DEPTH};
use crate::task::{NewTask, Task, TaskId, TaskState};

impl Engine {
    /// Creates a task (or returns the one already created with its `request_id`) and starts
    /// it at once if this replica has room; otherwise it waits PENDING in the queue.
    pub async fn start(&self, spec: NewTask) -> Result<Task> {
        if self.is_draining() {
            return Err(Error::ShuttingDown);
        }
        self.check_kind(&spec).await?;
        let mut spec = spec;
        if let Some(parent_id) = spec.parent_id {
            let parent = self
                .transitions
                .records()
                .get(parent_id)
                .await?
                .ok_or(Error::ParentNotFound(parent_id))?;
            if parent.state.is_terminal() && !spec.detached {
                return Err(Error::ParentFinished(parent_id));
            }
            spec.ancestors = self.ancestors_of_child(&parent).await?;
        }
        let task = Task::new(TaskId::now_v7(), spec.clone(), std::time::SystemTime::now());
        match self.transitions.records().create(task).await? {
            Created::New(task) => self.start_created(task, false).await,
            Created::NewFirst(task) => self.start_created(task, true).await,
            Created::Existing(existing) if existing.matches_request(&spec) => Ok(existing),
            Created::SessionCancelled => Err(Error::SessionCancelled(spec.session_id)),
            Created::Existing(existing) => Err(Error::RequestIdConflict {
                request_id: spec.request_id,
                existing: existing.id,
            }),
        }
    }

    /// The ancestors of a new child of `parent`, nearest first: refused if the tree would
    /// be deeper than [`MAX_DEPTH`] levels, or if any of them has exhausted its budget (the
    /// child would only be cancelled at its first report).
    /// Starts a task just created (`first`: nothing older waits), or leaves it queued.
    async fn start_created(&self, task: Task, first: bool) -> Result<Task> {
        let task = self.dispatcher.start_new(task, first).await?;
        if task.state == TaskState::Pending {
            // This replica is full: wake the others. (Announcing every start would
            // have them race this replica for work it can take itself.)
            self.dispatcher.announce_queued().await;
        }
        Ok(task)
    }

    async fn ancestors_of_child(&self, parent: &Task) -> Result<Vec<TaskId>> {
        if parent.ancestors.len() + 2 > MAX_DEPTH {
            return Err(Error::TreeTooDeep { parent: parent.id });
        }
        let ancestors: Vec<TaskId> = std::iter::once(parent.id)
            .chain(parent.ancestors.iter().copied())
            .collect();
        for spending in self.transitions.records().spending(&ancestors).await? {
            if let Some(exhausted) = budget::exhausted(&spending.budget, &spending.after) {
                return Err(Error::BudgetExhausted {
                    ancestor: spending.task,
                    reason: exhausted.reason(),
                });
            }
        }
        Ok(ancestors)
    }

    /// A kind is valid if it is built in (then its params are checked), declared with
    /// `--worker-kind`, or served by a worker on some replica now or within the TTL of
    /// learned kinds ([`super::kinds`]).
    async fn check_kind(&self, spec: &NewTask) -> Result<()> {
        if let Ok(kind) = self.places.kinds.get(&spec.kind) {
            return kind.prepare(&spec.params).map(drop);
        }
        if self.is_worker_kind(&spec.kind).await? {
            return Ok(());
        }
        Err(Error::KindUnknown(spec.kind.clone()))
    }
}
