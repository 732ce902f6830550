//! Persistence of task records, split by concern into focused traits that every backend
//! (the embedded [`memory`] store, [`redis`]) implements:
//!
//! - [`TaskRecords`]: the records themselves, their history and the queries over them,
//!   with one atomic write, [`TaskRecords::compare_and_swap`], for every change;
//! - [`TaskFeeds`]: the changes of a task (watchers) and of an owner's tasks (the owner's
//!   control channel), published after each write in version order;
//! - [`TaskQueue`]: the dispatch queue of PENDING tasks and its wake-ups;
//! - [`Membership`]: replica leases, and the replicas that lost theirs;
//! - [`WorkerKinds`]: the kinds learned from workers, with when a worker last served each.
//!
//! The store decides nothing: the engine decides what a record becomes, the store keeps it
//! only if the stored one is still the version it was derived from, is not terminal and
//! its fences allow the write. Components hold only the traits they use; [`Store`] hands
//! them out from one backend.

pub(crate) mod bucket;
pub(crate) mod history;
pub(crate) mod memory;
mod published;
pub(crate) mod redis;

#[cfg(test)]
pub(crate) mod conformance;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::Stream;

pub use self::published::Published;
use crate::task::budget::Spending;
use crate::task::{Task, TaskId, Usage};

/// Why a store operation failed. The two cases call for opposite reactions from a client,
/// so they are never folded into one.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer in time: retrying may succeed.
    #[error("the task store is unavailable: {0}")]
    Unavailable(#[source] ::redis::RedisError),
    /// A stored record cannot be decoded: retrying will not help.
    #[error("a stored task record cannot be decoded: {0}")]
    Corrupt(#[source] serde_json::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Result of [`TaskRecords::create`].
#[derive(Debug)]
pub enum Created {
    New(Task),
    /// New, and first in the dispatch queue: no older task waits, so the engine may start
    /// it without looking at the queue (a backend that knows it in the same write). On a
    /// Redis Cluster, first in its shard's queue: the rounds keep the order across shards.
    NewFirst(Task),
    /// A task with the same `request_id` already exists; nothing was written.
    Existing(Task),
    /// The task's session is marked cancelled ([`TaskRecords::cancel_session`]); nothing
    /// was written.
    SessionCancelled,
    /// Its tenant already has `max_active` active tasks; nothing was written.
    OverQuota {
        max_active: u64,
    },
}

/// Result of [`TaskRecords::compare_and_swap`].
#[derive(Debug)]
pub enum Swap {
    Swapped,
    /// Stored, and the write ended a task with no child stored: no child to release, so
    /// the engine skips looking for them.
    SwappedChildless,
    /// The stored record moved on (or is terminal, or the fences refuse the write): read
    /// it and decide again.
    Conflict,
    Missing,
}

/// Which active tasks a listing wants. Empty fields match everything; every label given
/// must match.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActiveFilter {
    /// The tenant whose tasks are listed; `None`: every tenant's (an admin).
    pub tenant: Option<String>,
    pub kind: Option<String>,
    pub session_id: Option<String>,
    pub parent_id: Option<TaskId>,
    pub labels: BTreeMap<String, String>,
}

impl ActiveFilter {
    pub fn matches(&self, task: &Task) -> bool {
        self.tenant
            .as_ref()
            .is_none_or(|tenant| *tenant == task.tenant)
            && self.kind.as_ref().is_none_or(|kind| *kind == task.kind)
            && self
                .session_id
                .as_ref()
                .is_none_or(|s| *s == task.session_id)
            && self.parent_id.is_none_or(|p| task.parent_id == Some(p))
            && self
                .labels
                .iter()
                .all(|(key, value)| task.labels.get(key) == Some(value))
    }
}

/// Changes of tasks as published after each successful write, in version order per task.
pub type Updates = Pin<Box<dyn Stream<Item = Update> + Send>>;

/// One wake-up per task queued PENDING, on any replica.
pub type Wakeups = Pin<Box<dyn Stream<Item = ()> + Send>>;

#[derive(Clone, Debug)]
pub enum Update {
    /// A new version, shared by every local subscriber of the task.
    Changed(Arc<Published>),
    /// Changes may have been missed (a slow subscriber, a reconnect): re-read the record.
    Lagged,
}

#[async_trait]
pub trait TaskRecords: Send + Sync + 'static {
    /// Inserts a new task, unless its non-empty `request_id` is already known, in which
    /// case the existing task is returned and nothing is written, or its session is
    /// marked cancelled. (The engine always
    /// passes its tenant's cap: [`TaskRecords::create_within`].)
    #[cfg(test)]
    async fn create(&self, task: Task) -> StoreResult<Created> {
        self.create_within(task, None).await
    }

    /// [`TaskRecords::create`], unless the task's tenant already has `max_active` active
    /// (non-terminal) tasks: checked and written atomically, so the cap holds across
    /// replicas.
    async fn create_within(&self, task: Task, max_active: Option<u64>) -> StoreResult<Created>;

    /// Marks `session` cancelled for `ttl`: [`TaskRecords::create`] refuses its new tasks
    /// until then (a repeated mark extends it).
    async fn cancel_session(&self, tenant: &str, session: &str, ttl: Duration) -> StoreResult<()>;

    async fn get(&self, id: TaskId) -> StoreResult<Option<Task>>;

    /// Stores `next` if the stored record has version `next.version - 1`, is not terminal
    /// and its fences allow `next` ([`Task::fences_allow`]: same owner and attempt, or the
    /// start of a PENDING task), and publishes it on the task's feeds.
    async fn compare_and_swap(&self, next: &Task) -> StoreResult<Swap>;

    /// [`TaskRecords::compare_and_swap`] of a report that spent `increment`, which is
    /// added, in the same transaction, to the stored `subtree_usage` of `next` and of each
    /// of its `ancestors` still stored. Returns, after a swap, the [`Spending`] of every
    /// task of that chain that has a budget (the task first, then its ancestors nearest
    /// first). `subtree_usage` moves without a new version: reads return it as stored now.
    async fn swap_spending(
        &self,
        next: &Task,
        increment: &Usage,
    ) -> StoreResult<(Swap, Vec<Spending>)>;

    /// The [`Spending`] (`before` = `after`: nothing is added) of the tasks of `ids` that
    /// are stored and have a budget, in the order given.
    async fn spending(&self, ids: &[TaskId]) -> StoreResult<Vec<Spending>>;

    /// Non-terminal tasks matching `filter` with ids greater than `after`, in creation
    /// (id) order, at most `limit`.
    async fn list_active(
        &self,
        filter: &ActiveFilter,
        after: Option<TaskId>,
        limit: usize,
    ) -> StoreResult<Vec<Task>>;

    /// Every known child of `parent`, active or not, in creation order.
    async fn children(&self, parent: TaskId) -> StoreResult<Vec<Task>>;

    /// Started, unfinished tasks of replica `owner`.
    async fn owned_by(&self, owner: &str) -> StoreResult<Vec<Task>>;

    /// The versions of task `id` after `after_version`, oldest first, from its history of
    /// the last [`history::HISTORY_LEN`] versions; `None` if the history no longer reaches
    /// back that far (or the task is unknown). See [`history::versions_after`].
    async fn history(&self, id: TaskId, after_version: u64) -> StoreResult<Option<Vec<Task>>>;
}

#[async_trait]
pub trait TaskFeeds: Send + Sync + 'static {
    /// Changes of task `id` from now on; the stream ends after the terminal version.
    /// Subscribe before reading the record to miss nothing in between.
    async fn subscribe(&self, id: TaskId) -> StoreResult<Updates>;

    /// The control channel of replica `owner`: every change of a task it owns. This is the
    /// fast hint that makes an owner act on a cancel recorded by any replica.
    async fn subscribe_owner(&self, owner: &str) -> StoreResult<Updates>;
}

#[async_trait]
pub trait TaskQueue: Send + Sync + 'static {
    /// The oldest PENDING tasks after `after` (creation order), at most `limit`: the
    /// dispatch queue, read page by page.
    async fn oldest_pending(&self, after: Option<TaskId>, limit: usize) -> StoreResult<Vec<Task>>;

    /// The tenants with PENDING tasks (possibly a few whose queue just emptied).
    async fn pending_tenants(&self) -> StoreResult<Vec<String>>;

    /// [`TaskQueue::oldest_pending`] of one tenant: the queue of each tenant, so that
    /// dispatch can take from every tenant in turn.
    async fn oldest_pending_of(
        &self,
        tenant: &str,
        after: Option<TaskId>,
        limit: usize,
    ) -> StoreResult<Vec<Task>>;

    /// Whether PENDING `task` is the oldest waiting task of its tenant, so StartTask may
    /// start it at once. On a Redis Cluster, of its tenant in its shard (one command, not
    /// one per shard): the rounds keep the order across shards.
    async fn first_of_its_tenant(&self, task: &Task) -> StoreResult<bool> {
        Ok(self
            .oldest_pending_of(&task.tenant, None, 1)
            .await?
            .first()
            .is_none_or(|oldest| oldest.id == task.id))
    }

    /// A wake-up each time a replica announces queued work ([`TaskQueue::announce_queued`]),
    /// so idle replicas dispatch without polling.
    async fn subscribe_queue(&self) -> StoreResult<Wakeups>;

    /// Tells every replica that a task waits PENDING that its creator could not start.
    async fn announce_queued(&self) -> StoreResult<()>;

    /// How many tasks wait PENDING, cluster-wide: one cheap read (`reins_queue_depth`).
    async fn queue_depth(&self) -> StoreResult<u64>;
}

#[async_trait]
pub trait Membership: Send + Sync + 'static {
    /// Holds `replica`'s lease for `ttl`. False if the lease had lapsed (other replicas
    /// may have settled its tasks).
    async fn renew_lease(&self, replica: &str, ttl: Duration) -> StoreResult<bool>;

    async fn release_lease(&self, replica: &str) -> StoreResult<()>;

    /// Replicas that own unfinished tasks but no longer hold a lease.
    async fn lost_owners(&self) -> StoreResult<Vec<String>>;
}

/// Kinds learned from workers' `hello`s, shared by every replica, each with the time a
/// worker last served it. A kind is valid only while a worker serves it somewhere, or
/// served it recently: the engine decides how recently (`--worker-kind-ttl`) and passes
/// the times in, so the store holds no clock and no policy.
#[async_trait]
pub trait WorkerKinds: Send + Sync + 'static {
    /// Workers serve `kinds` at `at`: each is learned if new, and its last-served time
    /// moves forward to `at` — never back, as replicas' clocks differ a little.
    async fn mark_served(&self, kinds: &[String], at: SystemTime) -> StoreResult<()>;

    /// Whether a worker (on any replica) served `kind` at or after `since`. A kind last
    /// served before `since` is refused whether or not it was forgotten yet.
    async fn is_worker_kind(&self, kind: &str, since: SystemTime) -> StoreResult<bool>;

    /// Forgets the kinds no worker served at or after `since`. Returns how many.
    async fn forget_worker_kinds(&self, since: SystemTime) -> StoreResult<usize>;
}

/// The tenants' start rates (`max_starts_per_second`, `burst`), shared by every replica.
#[async_trait]
pub trait StartRates: Send + Sync + 'static {
    /// Takes a start token of `tenant`'s bucket ([`bucket::Bucket`]): `None` if there was
    /// one, otherwise how long until there is.
    async fn take_start(
        &self,
        tenant: &str,
        per_second: f64,
        burst: u64,
    ) -> StoreResult<Option<Duration>>;
}

/// A tenant's counted places (`max_watchers`, `max_workers`), shared by every replica.
/// `what` names the count (`watchers`, `workers`); a holder is one watch or worker. A
/// holder lapses `ttl` after it was taken or last refreshed, so those of a replica that
/// died free themselves.
#[async_trait]
pub trait TenantPlaces: Send + Sync + 'static {
    /// Takes a place for `holder` unless `tenant` already has `max`; whether it did.
    async fn hold(
        &self,
        what: &str,
        tenant: &str,
        holder: &str,
        max: u64,
        ttl: Duration,
    ) -> StoreResult<bool>;

    async fn release(&self, what: &str, tenant: &str, holder: &str) -> StoreResult<()>;

    /// Keeps `holders` (still alive) from lapsing for another `ttl`.
    async fn refresh(
        &self,
        what: &str,
        tenant: &str,
        holders: &[String],
        ttl: Duration,
    ) -> StoreResult<()>;
}

/// A complete backend: every concern above. The conformance suite tests backends whole.
pub trait TaskStore:
    TaskRecords + TaskFeeds + TaskQueue + Membership + WorkerKinds + StartRates + TenantPlaces
{
}

impl<T: TaskRecords + TaskFeeds + TaskQueue + Membership + WorkerKinds + StartRates + TenantPlaces>
    TaskStore for T
{
}

/// One backend, handed out by concern: each component keeps only what it uses.
#[derive(Clone)]
pub(crate) struct Store {
    pub records: Arc<dyn TaskRecords>,
    pub feeds: Arc<dyn TaskFeeds>,
    pub queue: Arc<dyn TaskQueue>,
    pub membership: Arc<dyn Membership>,
    pub worker_kinds: Arc<dyn WorkerKinds>,
    pub start_rates: Arc<dyn StartRates>,
    pub tenant_places: Arc<dyn TenantPlaces>,
}

impl Store {
    pub fn new(backend: Arc<dyn TaskStore>) -> Store {
        Store {
            records: backend.clone(),
            feeds: backend.clone(),
            queue: backend.clone(),
            membership: backend.clone(),
            worker_kinds: backend.clone(),
            start_rates: backend.clone(),
            tenant_places: backend,
        }
    }
}
