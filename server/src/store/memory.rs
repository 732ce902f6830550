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

mod feeds;
mod index;
mod membership;
mod queue;
mod records;
mod retention;
mod tenants;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use super::Published;
use super::bucket::Bucket;
use crate::task::{Task, TaskId};

/// How many unread changes a slow subscriber may fall behind before it sees
/// [`Update::Lagged`](super::Update::Lagged).
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
    /// The last [`HISTORY_LEN`] versions, oldest first.
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

    /// How many records the store holds, finished ones included.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().tasks.len()
    }
}

#[cfg(test)]
mod tests;
