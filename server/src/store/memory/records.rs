//! The embedded store's records: each task's current version and bounded history, the
//! compare-and-set that replaces them, and the queries over them ([`TaskRecords`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::{Entry, Inner, MemoryStore};
use crate::store::history::{self, HISTORY_LEN};
use crate::store::{ActiveFilter, Created, Published, StoreResult, Swap, TaskRecords};
use crate::task::budget::{self, Spending};
use crate::task::{Task, TaskId, TaskState, Usage};

impl Inner {
    /// The compare-and-set of every change; `increment` is added to the stored subtree
    /// usage, which descendants move without a new version (`next` may carry an older one).
    fn swap(&mut self, next: &Task, increment: &Usage) -> Swap {
        let Some(entry) = self.tasks.get_mut(&next.id) else {
            return Swap::Missing;
        };
        if entry.task.state.is_terminal()
            || entry.task.version + 1 != next.version
            || !entry.task.fences_allow(next)
        {
            return Swap::Conflict;
        }
        // A task that moved with its worker is announced to its former owner too.
        let former_owner = (entry.task.owner != next.owner
            && !entry.task.owner.is_empty()
            && !next.owner.is_empty())
        .then(|| entry.task.owner.clone());
        let mut next = next.clone();
        next.subtree_usage = entry.task.subtree_usage.clone();
        let _ = budget::add(&mut next.subtree_usage, increment);
        let version = entry.replace(&next);
        self.index(&next);
        for owner in std::iter::once(&next.owner).chain(former_owner.as_ref()) {
            if let Some(control) = self.owner_channels.get(owner)
                && control.send(Arc::clone(&version)).is_err()
            {
                self.owner_channels.remove(owner);
            }
        }
        if next.state.is_terminal() && !self.children.contains_key(&next.id) {
            Swap::SwappedChildless
        } else {
            Swap::Swapped
        }
    }
}

/// The spending of `task`, whose subtree's usage was `before` a report; `None` without a
/// budget.
fn spending(task: &Task, before: Usage) -> Option<Spending> {
    (!task.budget.is_empty())
        .then(|| Spending::new(task.id, &task.budget, &before, &task.subtree_usage))
}

impl Entry {
    fn new(task: Task) -> Entry {
        let mut entry = Entry {
            history: VecDeque::with_capacity(4),
            task: task.clone(),
            updates: None,
        };
        entry.remember(Published::new(task));
        entry
    }

    fn remember(&mut self, version: Arc<Published>) {
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(version);
    }

    /// Stores a new version and publishes it to the task's subscribers.
    fn replace(&mut self, next: &Task) -> Arc<Published> {
        self.task = next.clone();
        let version = Published::new(next.clone());
        self.remember(Arc::clone(&version));
        if let Some(sender) = &self.updates {
            let delivered = sender.send(Arc::clone(&version)).is_ok();
            // After the terminal version the sender is dropped, which ends every stream once
            // it has been read; with no subscriber left there is nobody to send to.
            if !delivered || next.state.is_terminal() {
                self.updates = None;
            }
        }
        version
    }
}

#[async_trait]
impl TaskRecords for MemoryStore {
    async fn create_within(&self, task: Task, max_active: Option<u64>) -> StoreResult<Created> {
        let mut inner = self.lock();
        let request = (task.tenant.clone(), task.request_id.clone());
        if !task.request_id.is_empty()
            && let Some(existing) = inner.by_request_id.get(&request)
            && let Some(entry) = inner.tasks.get(existing)
        {
            return Ok(Created::Existing(entry.task.clone()));
        }
        // Sessions are per tenant, like request ids.
        let session = (task.tenant.clone(), task.session_id.clone());
        if !task.session_id.is_empty()
            && let Some(&until) = inner.cancelled_sessions.get(&session)
        {
            if until > SystemTime::now() {
                return Ok(Created::SessionCancelled);
            }
            inner.cancelled_sessions.remove(&session);
        }
        if let Some(max_active) = max_active {
            // One pass over the active tasks: the embedded store is for one replica and
            // tests, where that is cheap.
            let active = inner
                .active
                .iter()
                .filter_map(|id| inner.tasks.get(id))
                .filter(|entry| entry.task.tenant == task.tenant)
                .count() as u64;
            if active >= max_active {
                return Ok(Created::OverQuota { max_active });
            }
        }
        if !task.request_id.is_empty() {
            inner.by_request_id.insert(request, task.id);
        }
        if let Some(parent) = task.parent_id {
            inner.children.entry(parent).or_default().push(task.id);
        }
        inner.activate(&task);
        if task.state == TaskState::Pending {
            inner.pending.insert(task.id);
        }
        inner.index(&task);
        inner.tasks.insert(task.id, Entry::new(task.clone()));
        if inner.pending.first() == Some(&task.id) {
            return Ok(Created::NewFirst(task));
        }
        Ok(Created::New(task))
    }

    async fn cancel_session(&self, tenant: &str, session: &str, ttl: Duration) -> StoreResult<()> {
        let now = SystemTime::now();
        let mut inner = self.lock();
        // Expired marks are dropped here too, so they cannot pile up.
        inner.cancelled_sessions.retain(|_, until| *until > now);
        inner
            .cancelled_sessions
            .insert((tenant.to_owned(), session.to_owned()), now + ttl);
        Ok(())
    }

    async fn get(&self, id: TaskId) -> StoreResult<Option<Task>> {
        Ok(self.lock().tasks.get(&id).map(|entry| entry.task.clone()))
    }

    async fn compare_and_swap(&self, next: &Task) -> StoreResult<Swap> {
        Ok(self.lock().swap(next, &Usage::new()))
    }

    async fn swap_spending(
        &self,
        next: &Task,
        increment: &Usage,
    ) -> StoreResult<(Swap, Vec<Spending>)> {
        let mut inner = self.lock();
        let before = inner
            .tasks
            .get(&next.id)
            .map(|entry| entry.task.subtree_usage.clone())
            .unwrap_or_default();
        let swap = inner.swap(next, increment);
        if !matches!(swap, Swap::Swapped | Swap::SwappedChildless) {
            return Ok((swap, Vec::new()));
        }
        let mut chain: Vec<Spending> = inner
            .tasks
            .get(&next.id)
            .and_then(|entry| spending(&entry.task, before))
            .into_iter()
            .collect();
        for id in &next.ancestors {
            // An ancestor gone past its retention (a detached child outlives it) is skipped.
            let Some(entry) = inner.tasks.get_mut(id) else {
                continue;
            };
            let before = entry.task.subtree_usage.clone();
            let _ = budget::add(&mut entry.task.subtree_usage, increment);
            chain.extend(spending(&entry.task, before));
        }
        Ok((swap, chain))
    }

    async fn spending(&self, ids: &[TaskId]) -> StoreResult<Vec<Spending>> {
        let inner = self.lock();
        Ok(ids
            .iter()
            .filter_map(|id| inner.tasks.get(id))
            .filter_map(|entry| spending(&entry.task, entry.task.subtree_usage.clone()))
            .collect())
    }

    async fn list_active(
        &self,
        filter: &ActiveFilter,
        after: Option<TaskId>,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        let inner = self.lock();
        Ok(inner
            .candidates(filter, after)
            .filter_map(|id| inner.tasks.get(&id))
            .map(|entry| &entry.task)
            .filter(|task| !task.state.is_terminal() && filter.matches(task))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn children(&self, parent: TaskId) -> StoreResult<Vec<Task>> {
        let inner = self.lock();
        Ok(inner
            .children
            .get(&parent)
            .into_iter()
            .flatten()
            .filter_map(|id| inner.tasks.get(id))
            .map(|entry| entry.task.clone())
            .collect())
    }

    async fn owned_by(&self, owner: &str) -> StoreResult<Vec<Task>> {
        let inner = self.lock();
        Ok(inner
            .active
            .iter()
            .filter_map(|id| inner.tasks.get(id))
            .map(|entry| &entry.task)
            .filter(|task| task.state.is_started() && task.owner == owner)
            .cloned()
            .collect())
    }

    async fn history(&self, id: TaskId, after_version: u64) -> StoreResult<Option<Vec<Task>>> {
        let inner = self.lock();
        Ok(inner.tasks.get(&id).and_then(|entry| {
            history::versions_after(
                entry.history.iter().map(|version| version.task()),
                after_version,
            )
        }))
    }
}
