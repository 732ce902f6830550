//! The embedded store: task records in process memory, for a single replica that needs no
//! Redis. One mutex guards all indexes so every write is atomic; nothing is awaited while
//! it is held.
//!
//! Memory stays bounded: finished tasks are dropped `retention` after they finish (by
//! [`MemoryStore::sweep`]), together with their index entries and history. The store owns
//! the loop that sweeps it ([`MemoryStore::start`]), which ends with the replica's other
//! background work or when the store is dropped.
//!
//! One process is the whole cluster here: its lease never lapses and it never loses an
//! owner.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::bucket::Bucket;
use super::history::{self, HISTORY_LEN};
use super::{
    ActiveFilter, Created, Membership, Published, StartRates, StoreResult, Swap, TaskFeeds,
    TaskQueue, TaskRecords, TenantPlaces, Update, Updates, Wakeups, WorkerKinds,
};
use crate::background::Background;
use crate::task::budget::{self, Spending};
use crate::task::{Task, TaskId, TaskState, Usage};

/// How many unread changes a slow subscriber may fall behind before it sees
/// [`Update::Lagged`].
const SUBSCRIBER_BUFFER: usize = 1024;

pub struct MemoryStore {
    retention: Duration,
    inner: Mutex<Inner>,
    /// The tenants' start buckets, on this process's clock.
    buckets: Mutex<HashMap<String, Bucket>>,
    /// The tenants' counted places by what and tenant (one process: nothing lapses).
    places: Mutex<HashMap<(String, String), std::collections::HashSet<String>>>,
}

#[derive(Default)]
struct Inner {
    tasks: HashMap<TaskId, Entry>,
    /// Non-terminal task ids; UUIDv7 order is creation order.
    active: BTreeSet<TaskId>,
    /// Non-terminal task ids by kind and by session, so that a ListActive filter reads only
    /// the tasks it can match (the parent filter uses `children`).
    active_by_kind: HashMap<String, BTreeSet<TaskId>>,
    active_by_session: HashMap<String, BTreeSet<TaskId>>,
    pending: BTreeSet<TaskId>,
    /// The same, by tenant (no empty sets).
    pending_by_tenant: HashMap<String, BTreeSet<TaskId>>,
    children: HashMap<TaskId, Vec<TaskId>>,
    /// By tenant and request id: request ids are unique per tenant.
    by_request_id: HashMap<(String, String), TaskId>,
    /// Finished tasks in the order they finished, for the retention sweep.
    finished: VecDeque<(SystemTime, TaskId)>,
    /// Control channels, by owner.
    owner_channels: HashMap<String, broadcast::Sender<Arc<Published>>>,
    /// Learned kinds and when a worker last served each.
    worker_kinds: HashMap<String, SystemTime>,
    /// Sessions (by tenant) marked cancelled, until when.
    cancelled_sessions: HashMap<(String, String), SystemTime>,
    queue: Option<broadcast::Sender<()>>,
}

struct Entry {
    task: Task,
    /// The last [`HISTORY_LEN`] versions, oldest first (the latest is the one published).
    history: VecDeque<Arc<Published>>,
    /// Created on first subscription, dropped when the last subscriber leaves or the task
    /// finishes (which ends every subscriber's stream).
    updates: Option<broadcast::Sender<Arc<Published>>>,
}

impl MemoryStore {
    pub fn new(retention: Duration) -> MemoryStore {
        MemoryStore {
            retention,
            inner: Mutex::new(Inner::default()),
            buckets: Mutex::new(HashMap::new()),
            places: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping the whole server would, so recover the guard.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A store whose finished tasks are swept out `retention` after they finish, by a loop
    /// on `background`.
    pub fn start(retention: Duration, background: &Background) -> Arc<MemoryStore> {
        let store = Arc::new(MemoryStore::new(retention));
        background.spawn(sweep_retention(Arc::downgrade(&store)));
        store
    }

    /// Drops the tasks that finished more than `retention` before `now`. Returns how many.
    pub fn sweep(&self, now: SystemTime) -> usize {
        let mut inner = self.lock();
        let mut dropped = 0;
        while let Some(&(finished_at, id)) = inner.finished.front() {
            if finished_at + self.retention > now {
                break;
            }
            inner.finished.pop_front();
            inner.forget(id);
            dropped += 1;
        }
        dropped
    }

    /// How many records the store holds, finished ones included.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().tasks.len()
    }
}

/// Drops finished tasks once their retention has passed, until the store is dropped.
async fn sweep_retention(store: Weak<MemoryStore>) {
    let Some(retention) = store.upgrade().map(|store| store.retention) else {
        return;
    };
    let every = (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let Some(store) = store.upgrade() else { return };
        let dropped = store.sweep(SystemTime::now());
        if dropped > 0 {
            tracing::debug!(dropped, "finished tasks past retention dropped");
        }
    }
}

impl Inner {
    fn activate(&mut self, task: &Task) {
        self.active.insert(task.id);
        self.active_by_kind
            .entry(task.kind.clone())
            .or_default()
            .insert(task.id);
        if !task.session_id.is_empty() {
            self.active_by_session
                .entry(task.session_id.clone())
                .or_default()
                .insert(task.id);
        }
    }

    fn deactivate(&mut self, task: &Task) {
        self.active.remove(&task.id);
        for (index, key) in [
            (&mut self.active_by_kind, &task.kind),
            (&mut self.active_by_session, &task.session_id),
        ] {
            if let Some(ids) = index.get_mut(key) {
                ids.remove(&task.id);
                if ids.is_empty() {
                    index.remove(key);
                }
            }
        }
    }

    /// The ids a listing with `filter` must look at, after `after` in creation order: those
    /// of the smallest index the filter names (kind, session, parent), or every active one.
    fn candidates(
        &self,
        filter: &ActiveFilter,
        after: Option<TaskId>,
    ) -> Box<dyn Iterator<Item = TaskId> + '_> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        // `None`: an index with no entry for the key, so nothing can match.
        let mut smallest: Option<&BTreeSet<TaskId>> = Some(&self.active);
        for (index, key) in [
            (&self.active_by_kind, &filter.kind),
            (&self.active_by_session, &filter.session_id),
        ] {
            if let Some(key) = key {
                let ids = index.get(key);
                if ids.map_or(0, BTreeSet::len) < smallest.map_or(usize::MAX, BTreeSet::len) {
                    smallest = ids;
                }
            }
        }
        let smallest_len = smallest.map_or(0, BTreeSet::len);
        if let Some(parent) = filter.parent_id {
            let children = self.children.get(&parent).map_or(&[][..], Vec::as_slice);
            if children.len() < smallest_len {
                // Children are kept in the order they were created in, which two concurrent
                // starts can swap; a parent's children are few, so sort them.
                let mut ids: Vec<TaskId> = children
                    .iter()
                    .copied()
                    .filter(|id| after.is_none_or(|after| *id > after))
                    .collect();
                ids.sort_unstable();
                return Box::new(ids.into_iter());
            }
        }
        match smallest {
            Some(ids) => Box::new(ids.range((start, Bound::Unbounded)).copied()),
            None => Box::new(std::iter::empty()),
        }
    }

    fn index(&mut self, task: &Task) {
        if task.state.is_terminal() {
            self.deactivate(task);
            self.finished
                .push_back((task.finished_at.unwrap_or(task.updated_at), task.id));
        }
        if task.state == TaskState::Pending {
            // New, or a lost run put back in the queue.
            self.pending.insert(task.id);
            self.pending_by_tenant
                .entry(task.tenant.clone())
                .or_default()
                .insert(task.id);
        } else {
            self.pending.remove(&task.id);
            if let Some(queue) = self.pending_by_tenant.get_mut(&task.tenant) {
                queue.remove(&task.id);
                if queue.is_empty() {
                    self.pending_by_tenant.remove(&task.tenant);
                }
            }
        }
    }

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

    fn forget(&mut self, id: TaskId) {
        let Some(entry) = self.tasks.remove(&id) else {
            return;
        };
        let task = entry.task;
        let request = (task.tenant.clone(), task.request_id.clone());
        if !task.request_id.is_empty() && self.by_request_id.get(&request) == Some(&id) {
            self.by_request_id.remove(&request);
        }
        self.children.remove(&id);
        if let Some(parent) = task.parent_id
            && let Some(siblings) = self.children.get_mut(&parent)
        {
            siblings.retain(|child| *child != id);
            if siblings.is_empty() {
                self.children.remove(&parent);
            }
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

/// Receivers of a broadcast as an update stream.
fn updates_of(receiver: broadcast::Receiver<Arc<Published>>) -> Updates {
    Box::pin(BroadcastStream::new(receiver).map(|item| match item {
        Ok(task) => Update::Changed(task),
        Err(BroadcastStreamRecvError::Lagged(_)) => Update::Lagged,
    }))
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

#[async_trait]
impl TenantPlaces for MemoryStore {
    async fn hold(
        &self,
        what: &str,
        tenant: &str,
        holder: &str,
        max: u64,
        _ttl: Duration,
    ) -> StoreResult<bool> {
        let mut places = self.places.lock().unwrap_or_else(|p| p.into_inner());
        let held = places
            .entry((what.to_owned(), tenant.to_owned()))
            .or_default();
        if held.len() as u64 >= max {
            return Ok(false);
        }
        held.insert(holder.to_owned());
        Ok(true)
    }

    async fn release(&self, what: &str, tenant: &str, holder: &str) -> StoreResult<()> {
        let mut places = self.places.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = places.get_mut(&(what.to_owned(), tenant.to_owned())) {
            held.remove(holder);
        }
        Ok(())
    }

    async fn refresh(&self, _: &str, _: &str, _: &[String], _: Duration) -> StoreResult<()> {
        Ok(())
    }
}

#[async_trait]
impl StartRates for MemoryStore {
    async fn take_start(
        &self,
        tenant: &str,
        per_second: f64,
        burst: u64,
    ) -> StoreResult<Option<Duration>> {
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets
            .entry(tenant.to_owned())
            .or_insert_with(|| Bucket::full(burst, now_ms));
        Ok(bucket.take(now_ms, per_second, burst).err())
    }
}

#[async_trait]
impl TaskFeeds for MemoryStore {
    async fn subscribe(&self, id: TaskId) -> StoreResult<Updates> {
        let mut inner = self.lock();
        match inner.tasks.get_mut(&id) {
            Some(entry) if !entry.task.state.is_terminal() => {
                let sender = entry
                    .updates
                    .get_or_insert_with(|| broadcast::channel(SUBSCRIBER_BUFFER).0);
                Ok(updates_of(sender.subscribe()))
            }
            // Unknown or finished: nothing will ever change.
            _ => Ok(Box::pin(futures_util::stream::empty())),
        }
    }

    async fn subscribe_owner(&self, owner: &str) -> StoreResult<Updates> {
        let mut inner = self.lock();
        let sender = inner
            .owner_channels
            .entry(owner.to_owned())
            .or_insert_with(|| broadcast::channel(SUBSCRIBER_BUFFER).0);
        Ok(updates_of(sender.subscribe()))
    }
}

#[async_trait]
impl TaskQueue for MemoryStore {
    async fn oldest_pending(&self, after: Option<TaskId>, limit: usize) -> StoreResult<Vec<Task>> {
        let inner = self.lock();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(inner
            .pending
            .range((start, Bound::Unbounded))
            .take(limit)
            .filter_map(|id| inner.tasks.get(id))
            .map(|entry| entry.task.clone())
            .collect())
    }

    async fn pending_tenants(&self) -> StoreResult<Vec<String>> {
        Ok(self.lock().pending_by_tenant.keys().cloned().collect())
    }

    async fn oldest_pending_of(
        &self,
        tenant: &str,
        after: Option<TaskId>,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        let inner = self.lock();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(inner
            .pending_by_tenant
            .get(tenant)
            .into_iter()
            .flat_map(|queue| queue.range((start, Bound::Unbounded)))
            .take(limit)
            .filter_map(|id| inner.tasks.get(id))
            .map(|entry| entry.task.clone())
            .collect())
    }

    async fn subscribe_queue(&self) -> StoreResult<Wakeups> {
        let receiver = self
            .lock()
            .queue
            .get_or_insert_with(|| broadcast::channel(SUBSCRIBER_BUFFER).0)
            .subscribe();
        // A lagging listener has missed wake-ups, which is one more reason to dispatch.
        Ok(Box::pin(BroadcastStream::new(receiver).map(drop)))
    }

    async fn announce_queued(&self) -> StoreResult<()> {
        if let Some(queue) = &self.lock().queue {
            let _ = queue.send(());
        }
        Ok(())
    }

    async fn queue_depth(&self) -> StoreResult<u64> {
        Ok(self.lock().pending.len() as u64)
    }
}

/// One process is the whole cluster: its lease never lapses and nobody is ever lost.
#[async_trait]
impl Membership for MemoryStore {
    async fn renew_lease(&self, _replica: &str, _ttl: Duration) -> StoreResult<bool> {
        Ok(true)
    }

    async fn release_lease(&self, _replica: &str) -> StoreResult<()> {
        Ok(())
    }

    async fn lost_owners(&self) -> StoreResult<Vec<String>> {
        Ok(Vec::new())
    }
}

#[async_trait]
impl WorkerKinds for MemoryStore {
    async fn mark_served(&self, kinds: &[String], at: SystemTime) -> StoreResult<()> {
        let mut inner = self.lock();
        for kind in kinds {
            let last_served = inner.worker_kinds.entry(kind.clone()).or_insert(at);
            *last_served = (*last_served).max(at);
        }
        Ok(())
    }

    async fn is_worker_kind(&self, kind: &str, since: SystemTime) -> StoreResult<bool> {
        Ok(self
            .lock()
            .worker_kinds
            .get(kind)
            .is_some_and(|&last_served| last_served >= since))
    }

    async fn forget_worker_kinds(&self, since: SystemTime) -> StoreResult<usize> {
        let mut inner = self.lock();
        let before = inner.worker_kinds.len();
        inner
            .worker_kinds
            .retain(|_, &mut last_served| last_served >= since);
        Ok(before - inner.worker_kinds.len())
    }
}

#[cfg(test)]
mod tests;
