//! StartTask: the kind and parent rules, idempotency on `request_id`, and the first
//! placement of a new task.

use super::Engine;
use crate::auth::Caller;
use crate::auth::TenantQuotas;
use crate::error::{Error, Result};
use crate::store::Created;
use crate::task::budget::{self, MAX_DEPTH};
use crate::task::{NewTask, Task, TaskId, TaskState};

/// A tenant's `exec` list narrows `--allow-exec` for its tasks: `argv[0]` must be one of
/// its entries, or a path whose file name is one of its bare names. (Whether the program
/// is allowed at all, and resolves to the allowed file, `--allow-exec` has decided
/// already.)
fn check_exec(quotas: &TenantQuotas, spec: &NewTask) -> Result<()> {
    let Some(allowed) = &quotas.exec else {
        return Ok(());
    };
    if spec.kind != "exec" {
        return Ok(());
    }
    let program = spec
        .params
        .get("argv")
        .and_then(|argv| argv.get(0))
        .and_then(|program| program.as_str())
        .unwrap_or_default();
    let file_name = std::path::Path::new(program)
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    let listed = allowed
        .iter()
        .any(|entry| entry == program || (!entry.contains('/') && entry == file_name));
    if listed {
        return Ok(());
    }
    Err(Error::ExecNotAllowed(format!(
        "tenant {} may not run {} (its exec list: {})",
        quotas.name,
        crate::error::Echo(program),
        allowed.join(", ")
    )))
}

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
        if let Some(quotas) = &caller.quotas {
            check_exec(quotas, &spec)?;
        }
        if let Some(parent_id) = spec.parent_id {
            let parent = match self.check_as(caller, parent_id).await {
                Err(Error::TaskNotFound(_)) => return Err(Error::ParentNotFound(parent_id)),
                other => other?,
            };
            if parent.state.is_terminal() && !spec.detached {
                return Err(Error::ParentFinished(parent_id));
            }
            spec.ancestors = self.ancestors_of_child(&parent).await?;
            spec.tenant = parent.tenant;
        }
        let quotas = caller.quotas.as_deref();
        if let Some(quotas) = quotas {
            self.take_start(quotas).await?;
        }
        let max_active = quotas.and_then(|quotas| quotas.max_active_tasks);
        let task = Task::new(TaskId::now_v7(), spec.clone(), std::time::SystemTime::now());
        match self
            .transitions
            .records()
            .create_within(task, max_active)
            .await?
        {
            Created::OverQuota { max_active } => Err(Error::QuotaExceeded {
                tenant: spec.tenant,
                quota: "max_active_tasks",
                limit: format!("{max_active} active tasks"),
                retry_after: None,
            }),
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

    /// The ancestors of a new child of `parent`, nearest first: refused if the tree would
    /// be deeper than [`MAX_DEPTH`] levels, or if any of them has exhausted its budget (the
    /// child would only be cancelled at its first report).
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

    /// A start token of the tenant's `max_starts_per_second` bucket, if it has one.
    async fn take_start(&self, quotas: &TenantQuotas) -> Result<()> {
        let Some(per_second) = quotas.max_starts_per_second else {
            return Ok(());
        };
        let burst = quotas
            .burst
            .unwrap_or_else(|| per_second.ceil().max(1.0) as u64);
        match self
            .start_rates
            .take_start(&quotas.name, per_second, burst)
            .await?
        {
            None => Ok(()),
            Some(wait) => Err(Error::QuotaExceeded {
                tenant: quotas.name.clone(),
                quota: "max_starts_per_second",
                limit: format!("{per_second} per second, burst {burst}"),
                retry_after: Some(wait),
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
