//! The queue of PENDING tasks and the change feeds, read shard by shard on a cluster.

use async_trait::async_trait;
use redis::AsyncCommands;

use super::fanout::Channel;
use super::{RedisStore, unavailable};
use crate::store::{StoreResult, TaskFeeds, TaskQueue, Updates, Wakeups};
use crate::task::{Task, TaskId, TaskState};

impl RedisStore {
    /// The PENDING tasks of `ids`, in their order (a queue member may have just started).
    async fn still_pending(&self, ids: &[String]) -> StoreResult<Vec<Task>> {
        Ok(self
            .load(ids)
            .await?
            .into_iter()
            .filter(|task| task.state == TaskState::Pending)
            .collect())
    }
}

#[async_trait]
impl TaskFeeds for RedisStore {
    async fn subscribe(&self, id: TaskId) -> StoreResult<Updates> {
        self.fanout
            .updates(Channel::Task(self.keys.task_channel(id)))
            .await
    }

    async fn subscribe_owner(&self, owner: &str) -> StoreResult<Updates> {
        let channels = self
            .keys
            .shards()
            .map(|shard| self.keys.owner_channel(shard, owner))
            .collect();
        self.fanout.updates(Channel::Owner(channels)).await
    }
}

/// On a cluster the queue is one sorted set per shard: "the oldest" is the oldest of the
/// shards' oldest, read at once, so the order across shards is that of the ids.
#[async_trait]
impl TaskQueue for RedisStore {
    async fn oldest_pending(&self, after: Option<TaskId>, limit: usize) -> StoreResult<Vec<Task>> {
        let ids = self
            .ids_after_in_every_shard(|shard| self.keys.pending(shard), after, limit)
            .await?;
        self.still_pending(&ids).await
    }

    async fn pending_tenants(&self) -> StoreResult<Vec<String>> {
        let per_shard: Vec<Vec<String>> = self
            .in_every_shard(|shard| redis::Cmd::smembers(self.keys.pending_tenants(shard)))
            .await?;
        let mut tenants: Vec<String> = per_shard.into_iter().flatten().collect();
        tenants.sort();
        tenants.dedup();
        Ok(tenants)
    }

    async fn oldest_pending_of(
        &self,
        tenant: &str,
        after: Option<TaskId>,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        let ids = self
            .ids_after_in_every_shard(
                |shard| self.keys.pending_of_tenant(shard, tenant),
                after,
                limit,
            )
            .await?;
        self.still_pending(&ids).await
    }

    /// The first member of the tenant's queue in the task's shard: `swap.lua` removes a task
    /// from it in the write that starts or ends it, so its members are PENDING.
    async fn first_of_its_tenant(&self, task: &Task) -> StoreResult<bool> {
        let shard = self.keys.shard_of(task.id);
        let oldest: Vec<String> = self
            .connection()
            .zrange(self.keys.pending_of_tenant(shard, &task.tenant), 0, 0)
            .await
            .map_err(unavailable)?;
        Ok(oldest
            .first()
            .is_none_or(|oldest| *oldest == task.id.to_string()))
    }

    async fn subscribe_queue(&self) -> StoreResult<Wakeups> {
        self.fanout.wakeups().await
    }

    async fn announce_queued(&self) -> StoreResult<()> {
        let _: () = self
            .connection()
            .publish(self.keys.queue_channel(), "")
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn queue_depth(&self) -> StoreResult<u64> {
        let per_shard: Vec<u64> = self
            .in_every_shard(|shard| redis::Cmd::zcard(self.keys.pending(shard)))
            .await?;
        Ok(per_shard.into_iter().sum())
    }
}
