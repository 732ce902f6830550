//! The embedded store: task records in process memory, for a single replica that needs no
//! Redis. One mutex guards all indexes so every write is atomic; nothing is awaited while
//! it is held.
//!
//! Memory stays bounded: finished tasks are dropped `retention` after they finish (by
//! [`MemoryStore::sweep`], run periodically by the server), together with their index
//! entries.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::{ActiveFilter, Created, StoreResult, Swap, TaskStore, Update, Updates};
use crate::task::{Task, TaskId, TaskState};

/// How many unread changes a slow subscriber may fall behind before it sees
/// [`Update::Lagged`].
const SUBSCRIBER_BUFFER: usize = 1024;

pub struct MemoryStore {
    retention: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    tasks: HashMap<TaskId, Entry>,
    /// Non-terminal task ids; UUIDv7 order is creation order.
    active: BTreeSet<TaskId>,
    pending: BTreeSet<TaskId>,
    children: HashMap<TaskId, Vec<TaskId>>,
    by_request_id: HashMap<String, TaskId>,
    /// Finished tasks in the order they finished, for the retention sweep.
    finished: VecDeque<(SystemTime, TaskId)>,
}

struct Entry {
    task: Task,
    /// Created on first subscription, dropped when the last subscriber leaves or the task
    /// finishes (which ends every subscriber's stream).
    updates: Option<broadcast::Sender<Arc<Task>>>,
}

impl MemoryStore {
    pub fn new(retention: Duration) -> MemoryStore {
        MemoryStore {
            retention,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping the whole server would, so recover the guard.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    pub fn len(&self) -> usize {
        self.lock().tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn index(&mut self, task: &Task) {
        if task.state.is_terminal() {
            self.active.remove(&task.id);
            self.finished
                .push_back((task.finished_at.unwrap_or(task.updated_at), task.id));
        }
        if task.state != TaskState::Pending {
            self.pending.remove(&task.id);
        }
    }

    fn forget(&mut self, id: TaskId) {
        let Some(entry) = self.tasks.remove(&id) else {
            return;
        };
        let task = entry.task;
        if !task.request_id.is_empty() && self.by_request_id.get(&task.request_id) == Some(&id) {
            self.by_request_id.remove(&task.request_id);
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

impl Entry {
    fn publish(&mut self, task: &Task) {
        let Some(sender) = &self.updates else { return };
        let delivered = sender.send(Arc::new(task.clone())).is_ok();
        // After the terminal version the sender is dropped, which ends every stream once
        // it has been read; with no subscriber left there is nobody to send to.
        if !delivered || task.state.is_terminal() {
            self.updates = None;
        }
    }
}

#[async_trait]
impl TaskStore for MemoryStore {
    async fn create(&self, task: Task) -> StoreResult<Created> {
        let mut inner = self.lock();
        if !task.request_id.is_empty()
            && let Some(existing) = inner.by_request_id.get(&task.request_id)
            && let Some(entry) = inner.tasks.get(existing)
        {
            return Ok(Created::Existing(entry.task.clone()));
        }
        if !task.request_id.is_empty() {
            inner.by_request_id.insert(task.request_id.clone(), task.id);
        }
        if let Some(parent) = task.parent_id {
            inner.children.entry(parent).or_default().push(task.id);
        }
        inner.active.insert(task.id);
        if task.state == TaskState::Pending {
            inner.pending.insert(task.id);
        }
        inner.index(&task);
        inner.tasks.insert(
            task.id,
            Entry {
                task: task.clone(),
                updates: None,
            },
        );
        Ok(Created::New(task))
    }

    async fn get(&self, id: TaskId) -> StoreResult<Option<Task>> {
        Ok(self.lock().tasks.get(&id).map(|entry| entry.task.clone()))
    }

    async fn compare_and_swap(&self, next: &Task) -> StoreResult<Swap> {
        let mut inner = self.lock();
        let Some(entry) = inner.tasks.get_mut(&next.id) else {
            return Ok(Swap::Missing);
        };
        if entry.task.state.is_terminal() || entry.task.version + 1 != next.version {
            return Ok(Swap::Conflict);
        }
        entry.task = next.clone();
        entry.publish(next);
        inner.index(next);
        Ok(Swap::Swapped)
    }

    async fn list_active(
        &self,
        filter: &ActiveFilter,
        after: Option<TaskId>,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        let inner = self.lock();
        let start = match after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        Ok(inner
            .active
            .range((start, std::ops::Bound::Unbounded))
            .filter_map(|id| inner.tasks.get(id))
            .map(|entry| &entry.task)
            .filter(|task| filter.matches(task))
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

    async fn oldest_pending(&self, limit: usize) -> StoreResult<Vec<Task>> {
        let inner = self.lock();
        Ok(inner
            .pending
            .iter()
            .take(limit)
            .filter_map(|id| inner.tasks.get(id))
            .map(|entry| entry.task.clone())
            .collect())
    }

    async fn subscribe(&self, id: TaskId) -> StoreResult<Updates> {
        let mut inner = self.lock();
        let receiver = match inner.tasks.get_mut(&id) {
            Some(entry) if !entry.task.state.is_terminal() => entry
                .updates
                .get_or_insert_with(|| broadcast::channel(SUBSCRIBER_BUFFER).0)
                .subscribe(),
            // Unknown or finished: nothing will ever change.
            _ => return Ok(Box::pin(futures_util::stream::empty())),
        };
        Ok(Box::pin(BroadcastStream::new(receiver).map(
            |item| match item {
                Ok(task) => Update::Changed(task),
                Err(BroadcastStreamRecvError::Lagged(_)) => Update::Lagged,
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    fn store() -> Arc<dyn TaskStore> {
        Arc::new(MemoryStore::new(Duration::from_secs(3600)))
    }

    conformance::suite!(store());

    #[tokio::test]
    async fn sweep_drops_finished_tasks_after_retention_only() {
        let store = MemoryStore::new(Duration::from_secs(60));
        let (active, finished) = conformance::one_active_one_finished(&store).await;
        let finished_at = store
            .get(finished)
            .await
            .unwrap()
            .unwrap()
            .finished_at
            .unwrap();

        assert_eq!(store.sweep(finished_at + Duration::from_secs(59)), 0);
        assert!(store.get(finished).await.unwrap().is_some());

        assert_eq!(store.sweep(finished_at + Duration::from_secs(60)), 1);
        assert!(store.get(finished).await.unwrap().is_none());
        assert!(store.get(active).await.unwrap().is_some());
        assert_eq!(store.len(), 1, "nothing else is kept for the dropped task");
    }
}
