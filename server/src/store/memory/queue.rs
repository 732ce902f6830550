//! The embedded store's dispatch queue ([`TaskQueue`]): the pending indexes read in
//! creation order, and a broadcast for the wake-ups.

use std::ops::Bound;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use super::{MemoryStore, SUBSCRIBER_BUFFER};
use crate::store::{StoreResult, TaskQueue, Wakeups};
use crate::task::{Task, TaskId};

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
