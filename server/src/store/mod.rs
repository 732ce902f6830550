//! Persistence of task records: one trait, [`TaskStore`], implemented in memory (the
//! embedded store) and, later, in Redis.
//!
//! The store decides nothing. It keeps records, answers queries and offers one atomic
//! write, [`TaskStore::compare_and_swap`], that the engine uses for every change: the
//! new record is stored only if the stored one is still the version it was derived from
//! and is not terminal. Every stored change is published to the task's subscribers in
//! version order.

pub mod memory;
pub mod redis;

#[cfg(test)]
pub mod conformance;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::Stream;

use crate::task::{Task, TaskId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the task store is unavailable: {0}")]
    Unavailable(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Result of [`TaskStore::create`].
#[derive(Debug)]
pub enum Created {
    New(Task),
    /// A task with the same `request_id` already exists; nothing was written.
    Existing(Task),
}

/// Result of [`TaskStore::compare_and_swap`].
#[derive(Debug)]
pub enum Swap {
    Swapped,
    /// The stored record moved on (or is terminal): read it and decide again.
    Conflict,
    Missing,
}

/// Which active tasks a listing wants. Empty fields match everything; every label given
/// must match.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActiveFilter {
    pub kind: Option<String>,
    pub session_id: Option<String>,
    pub parent_id: Option<TaskId>,
    pub labels: BTreeMap<String, String>,
}

impl ActiveFilter {
    pub fn matches(&self, task: &Task) -> bool {
        self.kind.as_ref().is_none_or(|kind| *kind == task.kind)
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

/// How many versions of each task the store keeps for watch resume (`after_version`).
pub const HISTORY_LEN: usize = 100;

/// Changes of tasks as published after each successful write, in version order per task.
pub type Updates = Pin<Box<dyn Stream<Item = Update> + Send>>;

/// One wake-up per task queued PENDING, on any replica.
pub type Wakeups = Pin<Box<dyn Stream<Item = ()> + Send>>;

#[derive(Clone, Debug)]
pub enum Update {
    Changed(Arc<Task>),
    /// Changes may have been missed (a slow subscriber, a reconnect): re-read the record.
    Lagged,
}

#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// Inserts a new task, unless its non-empty `request_id` is already known, in which
    /// case the existing task is returned and nothing is written.
    async fn create(&self, task: Task) -> StoreResult<Created>;

    async fn get(&self, id: TaskId) -> StoreResult<Option<Task>>;

    /// Stores `next` if the stored record has version `next.version - 1`, is not terminal
    /// and its fences allow `next` ([`Task::fences_allow`]: same owner and attempt, or the
    /// start of a PENDING task), and publishes it to the task's subscribers.
    async fn compare_and_swap(&self, next: &Task) -> StoreResult<Swap>;

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

    /// The oldest PENDING tasks after `after` (creation order), at most `limit`: the
    /// dispatch queue, read page by page.
    async fn oldest_pending(&self, after: Option<TaskId>, limit: usize) -> StoreResult<Vec<Task>>;

    /// Changes of task `id` from now on; the stream ends after the terminal version.
    /// Subscribe before reading the record to miss nothing in between.
    async fn subscribe(&self, id: TaskId) -> StoreResult<Updates>;

    /// The versions of task `id` after `after_version`, oldest first, from its history of
    /// the last [`HISTORY_LEN`] versions; `None` if the history no longer reaches back
    /// that far (or the task is unknown).
    async fn history(&self, id: TaskId, after_version: u64) -> StoreResult<Option<Vec<Task>>>;

    /// The control channel of replica `owner`: every change of a task it owns. This is the
    /// fast hint that makes an owner act on a cancel recorded by any replica.
    async fn subscribe_owner(&self, owner: &str) -> StoreResult<Updates>;

    /// A wake-up each time a replica announces queued work ([`TaskStore::announce_queued`]),
    /// so idle replicas dispatch without polling.
    async fn subscribe_queue(&self) -> StoreResult<Wakeups>;

    /// Tells every replica that a task waits PENDING that its creator could not start.
    async fn announce_queued(&self) -> StoreResult<()>;

    /// Started, unfinished tasks of replica `owner`.
    async fn owned_by(&self, owner: &str) -> StoreResult<Vec<Task>>;

    /// Holds `replica`'s lease for `ttl`. False if the lease had lapsed (other replicas
    /// may have settled its tasks).
    async fn renew_lease(&self, replica: &str, ttl: std::time::Duration) -> StoreResult<bool>;

    async fn release_lease(&self, replica: &str) -> StoreResult<()>;

    /// Replicas that own unfinished tasks but no longer hold a lease.
    async fn lost_owners(&self) -> StoreResult<Vec<String>>;

    /// Remembers kinds served by a connected worker, so any replica accepts them.
    async fn register_worker_kinds(&self, kinds: &[String]) -> StoreResult<()>;

    /// Whether a worker has ever served `kind` (on any replica).
    async fn is_worker_kind(&self, kind: &str) -> StoreResult<bool>;
}
