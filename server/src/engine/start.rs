//! StartTask: the kind and parent rules, idempotency on `request_id`, and the first
//! placement of a new task.

use super::Engine;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::store::Created;
use crate::task::{NewTask, Task, TaskId, TaskState};

impl Engine {
    /// Creates a task (or returns the one already created with its `request_id`) and starts
    /// it at once if this replica has room; otherwise it waits PENDING in the queue.
    ///
    /// The task belongs to `caller`'s tenant, or to its parent's (the same, except for an
    /// admin's child of another tenant's task): a tree never spans tenants. A parent of
    /// another tenant is not found, and `request_id`s are unique per tenant.
    pub async fn start(&self, caller: &Caller, mut spec: NewTask) -> Result<Task> {
        if self.is_draining() {
            return Err(Error::ShuttingDown);
        }
        spec.tenant = caller.tenant.to_string();
        spec.created_by = caller.name.to_string();
        self.check_kind(&spec).await?;
        if let Some(parent_id) = spec.parent_id {
            let parent = match self.check_as(caller, parent_id).await {
                Err(Error::TaskNotFound(_)) => return Err(Error::ParentNotFound(parent_id)),
                other => other?,
            };
            if parent.state.is_terminal() && !spec.detached {
                return Err(Error::ParentFinished(parent_id));
            }
            spec.tenant = parent.tenant;
        }
        let task = Task::new(TaskId::now_v7(), spec.clone(), std::time::SystemTime::now());
        match self.transitions.records().create(task).await? {
            Created::New(task) => {
                let task = self.dispatcher.start_new(task).await?;
                if task.state == TaskState::Pending {
                    // This replica is full: wake the others. (Announcing every start would
                    // have them race this replica for work it can take itself.)
                    self.dispatcher.announce_queued().await;
                }
                Ok(task)
            }
            Created::Existing(existing) if existing.matches_request(&spec) => Ok(existing),
            Created::Existing(existing) => Err(Error::RequestIdConflict {
                request_id: spec.request_id,
                existing: existing.id,
            }),
        }
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
