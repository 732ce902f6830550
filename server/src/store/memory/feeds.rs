//! The embedded store's feeds ([`TaskFeeds`]): a broadcast per watched task and per owner.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::{MemoryStore, SUBSCRIBER_BUFFER};
use crate::store::{Published, StoreResult, TaskFeeds, Update, Updates};
use crate::task::TaskId;

/// Receivers of a broadcast as an update stream.
fn updates_of(receiver: broadcast::Receiver<Arc<Published>>) -> Updates {
    Box::pin(BroadcastStream::new(receiver).map(|item| match item {
        Ok(task) => Update::Changed(task),
        Err(BroadcastStreamRecvError::Lagged(_)) => Update::Lagged,
    }))
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
