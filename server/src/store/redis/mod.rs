//! The Redis store: task state shared by every replica, on one Redis or on a Redis
//! Cluster. The data model (keys, shards, scripts, channels, TTLs) is described in
//! `DATA_MODEL.md` next to this file.
//!
//! Every write is one Lua script ([`CREATE`], [`SWAP`]) that also maintains the indexes,
//! the bounded history and the pub/sub announcements, so they can never disagree with the
//! record; every script touches the keys of one shard ([`keys`]), so on a cluster it runs
//! on one slot. Reads are plain commands, read shard by shard where they span tasks.
//! Subscriptions go through one RESP3 connection per replica and are fanned out in
//! process ([`fanout`]).
//!
//! Every command is bounded by [`RESPONSE_TIMEOUT`]: while Redis is unreachable calls fail
//! fast with [`StoreError::Unavailable`], and the connections reconnect (and resubscribe)
//! by themselves when it is back.

mod codec;
mod connection;
mod fanout;
mod keys;
mod membership;
mod queue;
mod records;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::try_join_all;
use redis::{AsyncCommands, Script};

use self::codec::*;
#[cfg(test)]
use self::connection::RESPONSE_TIMEOUT;
use self::connection::{Commands, Connector, Target};
use self::fanout::Fanout;
use self::keys::{Keys, Shard};
use super::{StartRates, StoreError, StoreResult, TenantPlaces};
use crate::background::Background;
use crate::task::{Task, TaskId};

/// How many ids a listing reads per round trip.
const LIST_BATCH: usize = 256;

const CREATE: &str = include_str!("create.lua");
const SWAP: &str = include_str!("swap.lua");
const BUCKET: &str = include_str!("bucket.lua");
const HOLD: &str = include_str!("hold.lua");
const REFRESH: &str = include_str!("refresh.lua");
/// Reads of records with their checkpoints: scripts rather than `MULTI`/`EXEC`, which a
/// cluster aborts on a moved slot instead of following it.
const READ: &str = include_str!("read.lua");
const HISTORY: &str = include_str!("history.lua");

pub struct RedisStore {
    keys: Keys,
    commands: Commands,
    fanout: Arc<Fanout>,
    retention: Duration,
    create: Script,
    swap: Script,
    bucket: Script,
    hold: Script,
    refresh: Script,
    read: Script,
    history: Script,
}

fn unavailable(err: redis::RedisError) -> StoreError {
    StoreError::Unavailable(err)
}

/// How to reach Redis beyond its URL: the CA of a `rediss://` server (`--redis-ca`) and a
/// password read from a file (`REINS_REDIS_PASSWORD_FILE`), which wins over one in the
/// URL.
#[derive(Clone, Debug, Default)]
pub struct RedisAccess {
    pub ca_pem: Option<Vec<u8>>,
    pub password: Option<String>,
}

/// `url` without its password, for logs and errors: `redis://user:***@host:port/db`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials
                .split_once(':')
                .map_or(credentials, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

impl RedisStore {
    /// [`RedisStore::connect_with`] without a CA or password file, on one Redis or on a
    /// cluster of [`DEFAULT_TEST_SHARDS`] shards.
    #[cfg(test)]
    pub fn connect(
        url: &str,
        prefix: &str,
        retention: Duration,
        background: &Background,
    ) -> StoreResult<RedisStore> {
        RedisStore::connect_with(
            url,
            &RedisAccess::default(),
            prefix,
            DEFAULT_TEST_SHARDS,
            retention,
            background,
        )
    }

    /// Connects lazily: the server starts even while Redis is down and serves UNAVAILABLE
    /// until it is back. The pub/sub watchdog runs on `background`. `shards` is the number
    /// of shards on a Redis Cluster (`--redis-shards`; one Redis has one).
    pub fn connect_with(
        url: &str,
        access: &RedisAccess,
        prefix: &str,
        shards: usize,
        retention: Duration,
        background: &Background,
    ) -> StoreResult<RedisStore> {
        let target = Target::parse(url).map_err(|err| {
            unavailable(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "bad --redis-url",
                err,
            )))
        })?;
        let keys = match target {
            Target::Single(_) => Keys::single(prefix),
            Target::Cluster(_) => Keys::sharded(prefix, shards),
        };
        let connector = Connector::new(&target, access).map_err(unavailable)?;
        let commands = connector.commands().map_err(unavailable)?;
        let fanout = Fanout::connect(
            &connector,
            keys.is_sharded(),
            keys.queue_channel(),
            background,
        )?;
        Ok(RedisStore {
            keys,
            commands,
            fanout,
            retention,
            create: Script::new(CREATE),
            swap: Script::new(SWAP),
            bucket: Script::new(BUCKET),
            hold: Script::new(HOLD),
            refresh: Script::new(REFRESH),
            read: Script::new(READ),
            history: Script::new(HISTORY),
        })
    }

    fn connection(&self) -> Commands {
        self.commands.clone()
    }

    /// Up to `limit` members of a lexicographic sorted set after `after` (ids sort by
    /// creation time).
    async fn ids_after(
        &self,
        key: String,
        after: Option<TaskId>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let from = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        redis::cmd("ZRANGEBYLEX")
            .arg(key)
            .arg(from)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)
    }

    /// `command(shard)` sent to every shard at once, one command each; the answers in shard
    /// order. (On one Redis: the one command.)
    async fn in_every_shard<T: redis::FromRedisValue>(
        &self,
        command: impl Fn(Shard) -> redis::Cmd,
    ) -> StoreResult<Vec<T>> {
        try_join_all(self.keys.shards().map(|shard| {
            let command = command(shard);
            async move {
                command
                    .query_async(&mut self.connection())
                    .await
                    .map_err(unavailable)
            }
        }))
        .await
    }

    /// Up to `limit` ids after `after` in the index `key_of` names in each shard, merged in
    /// id (creation) order: one round trip per shard, all at once.
    async fn ids_after_in_every_shard(
        &self,
        key_of: impl Fn(Shard) -> String,
        after: Option<TaskId>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let per_shard = try_join_all(
            self.keys
                .shards()
                .map(|shard| self.ids_after(key_of(shard), after, limit)),
        )
        .await?;
        Ok(merge_in_order(per_shard, limit))
    }

    /// The records of `ids` that still exist, in the order given: one atomic round trip per
    /// shard they are in (every shard's at once).
    async fn load(&self, ids: &[String]) -> StoreResult<Vec<Task>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut by_shard: HashMap<Shard, Vec<&String>> = HashMap::new();
        for id in ids {
            // An id that does not parse names no record (it never came from a create).
            if let Ok(parsed) = TaskId::try_parse(id) {
                by_shard
                    .entry(self.keys.shard_of(parsed))
                    .or_default()
                    .push(id);
            }
        }
        let loaded =
            try_join_all(by_shard.into_values().map(|ids| self.load_in_shard(ids))).await?;
        let mut found: HashMap<TaskId, Task> = loaded
            .into_iter()
            .flatten()
            .map(|task| (task.id, task))
            .collect();
        Ok(ids
            .iter()
            .filter_map(|id| found.remove(&TaskId::try_parse(id).ok()?))
            .collect())
    }

    /// [`RedisStore::load`] of ids of one shard, in one script call ([`READ`]).
    async fn load_in_shard(&self, ids: Vec<&String>) -> StoreResult<Vec<Task>> {
        let mut read = self.read.prepare_invoke();
        for id in &ids {
            let id = TaskId::try_parse(id).expect("parsed by load");
            read.key(self.keys.task(id)).key(self.keys.checkpoints(id));
        }
        let found: Vec<(Vec<String>, Vec<String>)> = read
            .invoke_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        let mut tasks = Vec::with_capacity(found.len());
        for (fields, list) in found {
            let hash: HashMap<String, String> = fields
                .chunks_exact(2)
                .map(|pair| (pair[0].clone(), pair[1].clone()))
                .collect();
            // A task that expired or never was has no fields.
            let Some(json) = hash.get("json") else {
                continue;
            };
            let mut task = decode_record(json, &list, window_end(json)?)?;
            task.subtree_usage = subtree_usage(&hash);
            tasks.push(task);
        }
        Ok(tasks)
    }
}

/// Shards' ids (each sorted) merged into one sorted list of at most `limit`.
fn merge_in_order(per_shard: Vec<Vec<String>>, limit: usize) -> Vec<String> {
    if per_shard.len() == 1 {
        return per_shard.into_iter().next().unwrap_or_default();
    }
    let mut merged: Vec<String> = per_shard.into_iter().flatten().collect();
    merged.sort_unstable();
    merged.dedup();
    merged.truncate(limit);
    merged
}

/// The shard count the unit tests give a cluster.
#[cfg(test)]
pub const DEFAULT_TEST_SHARDS: usize = 8;

#[async_trait]
impl TenantPlaces for RedisStore {
    async fn hold(
        &self,
        what: &str,
        tenant: &str,
        holder: &str,
        max: u64,
        ttl: Duration,
    ) -> StoreResult<bool> {
        let taken: u64 = self
            .hold
            .key(self.keys.held(what, tenant))
            .arg(holder)
            .arg(max)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(taken == 1)
    }

    async fn release(&self, what: &str, tenant: &str, holder: &str) -> StoreResult<()> {
        let _: () = self
            .connection()
            .zrem(self.keys.held(what, tenant), holder)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn refresh(
        &self,
        what: &str,
        tenant: &str,
        holders: &[String],
        ttl: Duration,
    ) -> StoreResult<()> {
        let mut call = self.refresh.key(self.keys.held(what, tenant));
        call.arg(ttl.as_millis() as u64);
        for holder in holders {
            call.arg(holder);
        }
        let _: u64 = call
            .invoke_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl StartRates for RedisStore {
    async fn take_start(
        &self,
        tenant: &str,
        per_second: f64,
        burst: u64,
    ) -> StoreResult<Option<Duration>> {
        let wait_ms: u64 = self
            .bucket
            .key(self.keys.start_bucket(tenant))
            .arg(per_second)
            .arg(burst)
            .invoke_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }
}

#[cfg(test)]
mod tests;
