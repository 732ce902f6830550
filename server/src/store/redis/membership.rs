//! What replicas tell each other about themselves through Redis: their leases (and who
//! lost one), and the kinds their workers serve.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use redis::AsyncCommands;

use futures_util::future::try_join_all;

use super::keys::Shard;
use super::{RedisStore, unavailable};
use crate::store::{Membership, StoreResult, WorkerKinds};

#[async_trait]
impl Membership for RedisStore {
    async fn renew_lease(&self, replica: &str, ttl: Duration) -> StoreResult<bool> {
        let previous: Option<String> = redis::cmd("SET")
            .arg(self.keys.lease(replica))
            .arg(1)
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .arg("GET")
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(previous.is_some())
    }

    async fn release_lease(&self, replica: &str) -> StoreResult<()> {
        let _: () = self
            .connection()
            .del(self.keys.lease(replica))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The owners of started tasks whose lease lapsed, from every shard's `owners`; an
    /// owner gone and owning nothing in a shard is forgotten there.
    async fn lost_owners(&self) -> StoreResult<Vec<String>> {
        let per_shard =
            try_join_all(self.keys.shards().map(|shard| self.lost_owners_in(shard))).await?;
        let mut lost: Vec<String> = per_shard.into_iter().flatten().collect();
        lost.sort();
        lost.dedup();
        Ok(lost)
    }
}

impl RedisStore {
    async fn lost_owners_in(&self, shard: Shard) -> StoreResult<Vec<String>> {
        let owners: Vec<String> = self
            .connection()
            .smembers(self.keys.owners(shard))
            .await
            .map_err(unavailable)?;
        if owners.is_empty() {
            return Ok(owners);
        }
        // The leases are global keys (elsewhere on a cluster), sent at once on the
        // multiplexed connection; the owned sets are in the shard, one pipeline.
        let leased: Vec<bool> = try_join_all(owners.iter().map(|owner| async move {
            self.connection()
                .exists::<_, bool>(self.keys.lease(owner))
                .await
                .map_err(unavailable)
        }))
        .await?;
        let mut owned = redis::pipe();
        for owner in &owners {
            owned.scard(self.keys.owned(shard, owner));
        }
        let owned: Vec<u64> = owned
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        let mut lost = Vec::new();
        for ((owner, leased), owned) in owners.iter().zip(leased).zip(owned) {
            match (leased, owned) {
                (false, 0) => {
                    // Gone and owning nothing: forget it.
                    let _: () = self
                        .connection()
                        .srem(self.keys.owners(shard), owner)
                        .await
                        .map_err(unavailable)?;
                }
                (false, _) => lost.push(owner.clone()),
                (true, _) => {}
            }
        }
        Ok(lost)
    }
}

/// A learned kind's score in `{p}learned-kinds`: when a worker last served it, in ms since
/// the Unix epoch (exact in a double for the next 285,000 years).
fn served_score(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since_epoch| since_epoch.as_millis() as u64)
}

/// One sorted set, kind → last served: a refresh of every kind a replica's workers serve
/// is one `ZADD`, a check one `ZSCORE`, and the cleanup one `ZREMRANGEBYSCORE`. (A key
/// per kind with a TTL would cost a command per kind per refresh, and would fix the TTL
/// when written rather than when read.)
#[async_trait]
impl WorkerKinds for RedisStore {
    async fn mark_served(&self, kinds: &[String], at: SystemTime) -> StoreResult<()> {
        if kinds.is_empty() {
            return Ok(());
        }
        let score = served_score(at);
        let mut zadd = redis::cmd("ZADD");
        // GT: a replica whose clock is behind never moves a kind's time back.
        zadd.arg(self.keys.learned_kinds()).arg("GT");
        for kind in kinds {
            zadd.arg(score).arg(kind);
        }
        let _: () = zadd
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn is_worker_kind(&self, kind: &str, since: SystemTime) -> StoreResult<bool> {
        let last_served: Option<f64> = self
            .connection()
            .zscore(self.keys.learned_kinds(), kind)
            .await
            .map_err(unavailable)?;
        Ok(last_served.is_some_and(|score| score >= served_score(since) as f64))
    }

    async fn forget_worker_kinds(&self, since: SystemTime) -> StoreResult<usize> {
        // `(` makes the bound exclusive: a kind served exactly at `since` stays.
        self.connection()
            .zrembyscore(
                self.keys.learned_kinds(),
                "-inf",
                format!("({}", served_score(since)),
            )
            .await
            .map_err(unavailable)
    }
}
