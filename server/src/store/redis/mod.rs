//! The Redis store: task state shared by every replica. The data model (keys, scripts,
//! channels, TTLs) is described in `DATA_MODEL.md` next to this file.
//!
//! Every write is one Lua script ([`CREATE`], [`SWAP`]) that also maintains the indexes,
//! the bounded history and the pub/sub announcements, so they can never disagree with the
//! record. Reads are plain commands. Subscriptions go through one RESP3 connection per
//! replica and are fanned out in process ([`fanout`]).
//!
//! Every command is bounded by [`RESPONSE_TIMEOUT`]: while Redis is unreachable calls fail
//! fast with [`StoreError::Unavailable`], and the connections reconnect (and resubscribe)
//! by themselves when it is back.

mod fanout;
mod keys;
mod membership;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::{AsyncCommands, Client, ProtocolVersion, Script};

use self::fanout::{Channel, Fanout};
use self::keys::Keys;
use super::history::{self, HISTORY_LEN};
use super::{
    ActiveFilter, Created, StartRates, StoreError, StoreResult, Swap, TaskFeeds, TaskQueue,
    TaskRecords, TenantPlaces, Updates, Wakeups,
};
use crate::background::Background;
use crate::task::budget::Spending;
use crate::task::{Checkpoints, Task, TaskId, TaskState, Usage};

/// How long a command may take before the call fails with UNAVAILABLE.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How many ids a listing reads per round trip.
const LIST_BATCH: usize = 256;

const CREATE: &str = include_str!("create.lua");
const SWAP: &str = include_str!("swap.lua");
const BUCKET: &str = include_str!("bucket.lua");
const HOLD: &str = include_str!("hold.lua");
const REFRESH: &str = include_str!("refresh.lua");

pub struct RedisStore {
    keys: Keys,
    commands: ConnectionManager,
    fanout: Arc<Fanout>,
    retention: Duration,
    create: Script,
    swap: Script,
    bucket: Script,
    hold: Script,
    refresh: Script,
}

fn unavailable(err: redis::RedisError) -> StoreError {
    StoreError::Unavailable(err)
}

fn decode(json: &str) -> StoreResult<Task> {
    serde_json::from_str(json).map_err(StoreError::Corrupt)
}

/// Where a stored record's checkpoints are: the key of the JSON field naming the window
/// `[end - len, end)` of positions in `{p}checkpoints:{id}`.
const WINDOW: &str = "checkpoints_window";

/// The record as the hash and the history hold it: without its checkpoints (they live in
/// their own list, see DATA_MODEL.md), with the window of positions they occupy, so a
/// version costs the same whatever the number of checkpoints.
fn encode_record(task: &Task) -> String {
    let mut record = task.clone();
    record.partial_results = Checkpoints::default();
    let mut value = serde_json::to_value(&record).expect("a task always serializes");
    let end = task.partial_results.end_position();
    value[WINDOW] = serde_json::json!([end, task.partial_results.values().len()]);
    value.to_string()
}

/// The record as `swap.lua` publishes it: whole, plus the window of its checkpoints (their
/// JSON array does not carry their positions), so a subscriber's copy is the record as
/// stored and may be the base of the next write (the driver's final report is).
fn encode_published(task: &Task) -> String {
    let mut value = serde_json::to_value(task).expect("a task always serializes");
    let end = task.partial_results.end_position();
    value[WINDOW] = serde_json::json!([end, task.partial_results.values().len()]);
    value.to_string()
}

/// A record as published ([`encode_published`]), its checkpoints at their positions.
fn decode_published(json: &str) -> serde_json::Result<Task> {
    let mut value: serde_json::Value = serde_json::from_str(json)?;
    let window = value
        .as_object_mut()
        .and_then(|fields| fields.remove(WINDOW));
    let mut task: Task = serde_json::from_value(value)?;
    if let Some(window) = window {
        let (end, _len): (u64, u64) = serde_json::from_value(window)?;
        let values: Vec<_> = task
            .partial_results
            .values()
            .iter()
            .map(|value| (**value).clone())
            .collect();
        task.partial_results = Checkpoints::from_values_at(Some(end), values);
    }
    Ok(task)
}

/// A record of the hash or the history, with its checkpoints taken from `list`, the
/// newest entries of the checkpoint list, of which the last sits just before `list_end`.
/// A record written before checkpoints had a list of their own keeps those in its JSON.
fn decode_record(json: &str, list: &[String], list_end: u64) -> StoreResult<Task> {
    let mut value: serde_json::Value = serde_json::from_str(json).map_err(StoreError::Corrupt)?;
    let window = value
        .as_object_mut()
        .and_then(|fields| fields.remove(WINDOW));
    let mut task: Task = serde_json::from_value(value).map_err(StoreError::Corrupt)?;
    let Some(window) = window else {
        return Ok(task);
    };
    let (end, len): (u64, u64) = serde_json::from_value(window).map_err(StoreError::Corrupt)?;
    let list_start = list_end.saturating_sub(list.len() as u64);
    let start = end.saturating_sub(len).max(list_start);
    let end = end.min(list_end).max(start);
    let values = list[(start - list_start) as usize..(end - list_start) as usize]
        .iter()
        .map(|entry| serde_json::from_str(entry).map_err(StoreError::Corrupt))
        .collect::<StoreResult<Vec<_>>>()?;
    task.partial_results = Checkpoints::from_values_at(Some(end), values);
    Ok(task)
}

/// The position just past the newest entry of a record's checkpoint list: the end of the
/// record's window (the list and the record are read together).
fn window_end(json: &str) -> StoreResult<u64> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(StoreError::Corrupt)?;
    Ok(value[WINDOW][0].as_u64().unwrap_or(0))
}

/// Prefix of the task hash fields that hold its subtree's usage, one per dimension: moved
/// by `swap.lua`'s roll-up without a new version, so they are not in the record's JSON.
const SUBTREE: &str = "s:";

/// The subtree usage held in a task hash's `s:<dimension>` fields.
fn subtree_usage(hash: &HashMap<String, String>) -> Usage {
    hash.iter()
        .filter_map(|(field, value)| {
            let dimension = field.strip_prefix(SUBTREE)?;
            Some((dimension.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The budget as `create.lua` stores it for `swap.lua`: a JSON object of the limits as
/// strings, which come back exact (Lua would print its numbers with 14 digits).
fn budget_field(budget: &Usage) -> String {
    if budget.is_empty() {
        return String::new();
    }
    let limits: serde_json::Map<String, serde_json::Value> = budget
        .iter()
        .map(|(dimension, limit)| (dimension.clone(), limit.to_string().into()))
        .collect();
    serde_json::Value::Object(limits).to_string()
}

/// A Redis string reply holding a number.
fn number(value: &redis::Value) -> Option<f64> {
    match value {
        redis::Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        redis::Value::SimpleString(text) => text.parse().ok(),
        redis::Value::Double(number) => Some(*number),
        redis::Value::Int(number) => Some(*number as f64),
        _ => None,
    }
}

fn text(value: &redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        redis::Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// `swap.lua`'s reply: `'ok'`, `'ok-childless'`, `'conflict'`, `'missing'`, or after a roll-up `{'ok',
/// spending…}` with each spending `{chain index, (dimension, limit, before, after)…}`.
fn swap_reply(reply: &redis::Value, chain: &[TaskId]) -> (Swap, Vec<Spending>) {
    let corrupt = || {
        tracing::error!(?reply, "swap.lua answered something unexpected");
        (Swap::Conflict, Vec::new())
    };
    let items = match reply {
        redis::Value::Array(items) => items.as_slice(),
        single => {
            return match text(single).as_deref() {
                Some("ok") => (Swap::Swapped, Vec::new()),
                Some("ok-childless") => (Swap::SwappedChildless, Vec::new()),
                Some("missing") => (Swap::Missing, Vec::new()),
                _ => (Swap::Conflict, Vec::new()),
            };
        }
    };
    let mut spendings = Vec::new();
    for entry in items.iter().skip(1) {
        let redis::Value::Array(fields) = entry else {
            return corrupt();
        };
        let Some(&task) = fields
            .first()
            .and_then(number)
            .and_then(|index| chain.get(index as usize))
        else {
            return corrupt();
        };
        let mut spending = Spending {
            task,
            ..Spending::default()
        };
        for limit in fields[1..].chunks(4) {
            let [dimension, limit, before, after] = limit else {
                return corrupt();
            };
            let (Some(dimension), Some(limit), Some(before), Some(after)) = (
                text(dimension),
                number(limit),
                number(before),
                number(after),
            ) else {
                return corrupt();
            };
            spending.budget.insert(dimension.clone(), limit);
            spending.before.insert(dimension.clone(), before);
            spending.after.insert(dimension, after);
        }
        spendings.push(spending);
    }
    (Swap::Swapped, spendings)
}

fn state_name(state: TaskState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .expect("states serialize as strings")
}

fn flag(value: bool) -> &'static str {
    if value { "1" } else { "0" }
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
    /// [`RedisStore::connect_with`] without a CA or password file.
    #[cfg(test)]
    pub fn connect(
        url: &str,
        prefix: &str,
        retention: Duration,
        background: &Background,
    ) -> StoreResult<RedisStore> {
        RedisStore::connect_with(url, &RedisAccess::default(), prefix, retention, background)
    }

    /// Connects lazily: the server starts even while Redis is down and serves UNAVAILABLE
    /// until it is back. The pub/sub watchdog runs on `background`.
    pub fn connect_with(
        url: &str,
        access: &RedisAccess,
        prefix: &str,
        retention: Duration,
        background: &Background,
    ) -> StoreResult<RedisStore> {
        let client = Client::open(url).map_err(unavailable)?;
        let info = client.get_connection_info().clone();
        let mut settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        if let Some(password) = &access.password {
            settings = settings.set_password(password);
        }
        // Small request/reply messages: Nagle's algorithm would hold them back ~40 ms.
        let info = info
            .set_redis_settings(settings)
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let client = match &access.ca_pem {
            Some(ca) => Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            None => Client::open(info),
        }
        .map_err(unavailable)?;
        // One reconnect attempt per failed command: while Redis is down a call fails in
        // about a second instead of waiting out a long retry schedule. The next command
        // tries again, and the pub/sub connection has a watchdog that keeps trying.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(unavailable)?;
        let keys = Keys {
            prefix: prefix.to_owned(),
        };
        let fanout = Fanout::connect(client, config, keys.queue_channel(), background)?;
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
        })
    }

    fn connection(&self) -> ConnectionManager {
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

    /// The sorted set a listing with `filter` reads: the smallest of the indexes the filter
    /// names (the active tasks of a kind or of a session, the children of a parent), or
    /// every active task. One round trip.
    async fn smallest_index(&self, filter: &ActiveFilter) -> StoreResult<String> {
        let mut indexes = vec![self.keys.active()];
        indexes.extend(
            filter
                .kind
                .as_deref()
                .map(|kind| self.keys.active_of_kind(kind)),
        );
        indexes.extend(
            filter
                .session_id
                .as_deref()
                .map(|session| self.keys.active_of_session(session)),
        );
        indexes.extend(filter.parent_id.map(|parent| self.keys.children(parent)));
        if indexes.len() == 1 {
            return Ok(indexes.remove(0));
        }
        let mut pipe = redis::pipe();
        for index in &indexes {
            pipe.zcard(index);
        }
        let sizes: Vec<u64> = pipe
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        // The smallest, an index rather than `active` on a tie; an empty index means that
        // nothing can match.
        let smallest = (0..indexes.len())
            .min_by_key(|&i| (sizes[i], std::cmp::Reverse(i)))
            .unwrap_or(0);
        Ok(indexes.swap_remove(smallest))
    }

    /// The records of `ids` that still exist, in the order given.
    async fn load(&self, ids: &[String]) -> StoreResult<Vec<Task>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for id in ids {
            pipe.hgetall(self.keys.task(id))
                .lrange(self.keys.checkpoints(id), 0, -1);
        }
        let found: Vec<(HashMap<String, String>, Vec<String>)> = pipe
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        found
            .iter()
            .filter_map(|(hash, list)| hash.get("json").map(|json| (hash, json, list)))
            .map(|(hash, json, list)| {
                let mut task = decode_record(json, list, window_end(json)?)?;
                task.subtree_usage = subtree_usage(hash);
                Ok(task)
            })
            .collect()
    }
}

#[async_trait]
impl TaskRecords for RedisStore {
    async fn create_within(&self, task: Task, max_active: Option<u64>) -> StoreResult<Created> {
        let parent = task
            .parent_id
            .map(|p| self.keys.children(p))
            .unwrap_or_else(|| self.keys.children(""));
        let reply: Vec<String> = self
            .create
            .key(self.keys.task(task.id))
            .key(self.keys.request(&task.tenant, &task.request_id))
            .key(self.keys.active())
            .key(self.keys.pending())
            .key(parent)
            .key(self.keys.history(task.id))
            .key(self.keys.active_of_kind(&task.kind))
            .key(self.keys.active_of_session(&task.session_id))
            .key(self.keys.cancelled_session(&task.tenant, &task.session_id))
            .key(self.keys.active_of_tenant(&task.tenant))
            .key(self.keys.pending_of_tenant(&task.tenant))
            .key(self.keys.pending_tenants())
            .arg(encode_record(&task))
            .arg(task.id.to_string())
            .arg(task.version)
            .arg(state_name(task.state))
            .arg(flag(!task.request_id.is_empty()))
            .arg(flag(task.parent_id.is_some()))
            .arg(self.keys.task_prefix())
            .arg(flag(!task.session_id.is_empty()))
            .arg(budget_field(&task.budget))
            .arg(max_active.map(|max| max.to_string()).unwrap_or_default())
            .arg(&task.tenant)
            .invoke_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        match reply.as_slice() {
            [existing, json] if existing == "existing" => {
                let found = decode(json)?;
                // Read again with its checkpoints.
                Ok(Created::Existing(
                    self.get(found.id).await?.unwrap_or(found),
                ))
            }
            [refused] if refused == "session-cancelled" => Ok(Created::SessionCancelled),
            [quota] if quota == "quota" => Ok(Created::OverQuota {
                max_active: max_active.unwrap_or_default(),
            }),
            [first] if first == "new-first" => Ok(Created::NewFirst(task)),
            _ => Ok(Created::New(task)),
        }
    }

    async fn cancel_session(&self, tenant: &str, session: &str, ttl: Duration) -> StoreResult<()> {
        let _: () = redis::cmd("SET")
            .arg(self.keys.cancelled_session(tenant, session))
            .arg("1")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get(&self, id: TaskId) -> StoreResult<Option<Task>> {
        let id = id.to_string();
        Ok(self.load(std::slice::from_ref(&id)).await?.pop())
    }

    async fn compare_and_swap(&self, next: &Task) -> StoreResult<Swap> {
        Ok(self.swap_spending(next, &Usage::new()).await?.0)
    }

    async fn swap_spending(
        &self,
        next: &Task,
        increment: &Usage,
    ) -> StoreResult<(Swap, Vec<Spending>)> {
        let mut script = self.swap.prepare_invoke();
        script
            .key(self.keys.task(next.id))
            .key(self.keys.pending())
            .key(self.keys.active())
            .key(self.keys.history(next.id))
            .key(self.keys.owned(&next.owner))
            .key(self.keys.owners())
            .key(self.keys.request(&next.tenant, &next.request_id))
            .key(self.keys.children(next.id))
            .key(self.keys.checkpoints(next.id))
            .key(self.keys.active_of_kind(&next.kind))
            .key(self.keys.active_of_session(&next.session_id))
            .key(self.keys.active_of_tenant(&next.tenant))
            .key(self.keys.pending_of_tenant(&next.tenant))
            .key(self.keys.pending_tenants())
            .arg(encode_record(next))
            .arg(next.version)
            .arg(state_name(next.state))
            .arg(&next.owner)
            .arg(next.attempt)
            .arg(flag(next.state.is_terminal()))
            .arg(next.id.to_string())
            .arg(self.retention.as_millis() as u64)
            .arg(HISTORY_LEN)
            .arg(self.keys.task_channel(next.id))
            .arg(self.keys.owner_channel(&next.owner))
            .arg(flag(!next.request_id.is_empty()))
            .arg(self.keys.owned(""))
            .arg(encode_published(next))
            .arg(next.partial_results.end_position())
            .arg(next.partial_results.values().len() + HISTORY_LEN)
            .arg(
                next.partial_results
                    .values()
                    .last()
                    .map(|newest| newest.to_string())
                    .unwrap_or_default(),
            )
            .arg(flag(!next.session_id.is_empty()))
            .arg(self.keys.owner_channel(""))
            .arg(&next.worker)
            .arg(&next.tenant)
            .arg(increment.len());
        for (dimension, amount) in increment {
            script.arg(dimension).arg(amount.to_string());
        }
        for ancestor in &next.ancestors {
            script.key(self.keys.task(ancestor));
        }
        let reply: redis::Value = script
            .invoke_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        let chain: Vec<TaskId> = std::iter::once(next.id)
            .chain(next.ancestors.iter().copied())
            .collect();
        Ok(swap_reply(&reply, &chain))
    }

    async fn spending(&self, ids: &[TaskId]) -> StoreResult<Vec<Spending>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Two small round trips rather than the whole records: the budgets, then the
        // subtree usage in their dimensions of the tasks that have one.
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hget(self.keys.task(id), "budget");
        }
        let raw: Vec<Option<String>> = pipe
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        let mut budgets = Vec::new();
        for (id, raw) in ids.iter().zip(raw) {
            let Some(raw) = raw.filter(|raw| !raw.is_empty()) else {
                continue;
            };
            let limits: HashMap<String, String> =
                serde_json::from_str(&raw).map_err(StoreError::Corrupt)?;
            let budget: Usage = limits
                .into_iter()
                .filter_map(|(dimension, limit)| Some((dimension, limit.parse().ok()?)))
                .collect();
            budgets.push((*id, budget));
        }
        if budgets.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (id, budget) in &budgets {
            let fields: Vec<String> = budget.keys().map(|d| format!("{SUBTREE}{d}")).collect();
            pipe.cmd("HMGET").arg(self.keys.task(id)).arg(fields);
        }
        let used: Vec<Vec<Option<f64>>> = pipe
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        Ok(budgets
            .iter()
            .zip(used)
            .map(|((id, budget), used)| {
                let used: Usage = budget
                    .keys()
                    .zip(used)
                    .map(|(dimension, used)| (dimension.clone(), used.unwrap_or(0.0)))
                    .collect();
                Spending::new(*id, budget, &used, &used)
            })
            .collect())
    }

    async fn list_active(
        &self,
        filter: &ActiveFilter,
        after: Option<TaskId>,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        let index = self.smallest_index(filter).await?;
        let mut found = Vec::new();
        let mut after = after;
        while found.len() < limit {
            let ids = self.ids_after(index.clone(), after, LIST_BATCH).await?;
            let Some(last) = ids.last() else { break };
            after = TaskId::try_parse(last).ok();
            let exhausted = ids.len() < LIST_BATCH || after.is_none();
            let tasks = self.load(&ids).await?;
            found.extend(
                tasks
                    .into_iter()
                    .filter(|task| !task.state.is_terminal() && filter.matches(task)),
            );
            if exhausted {
                break;
            }
        }
        found.truncate(limit);
        Ok(found)
    }

    async fn children(&self, parent: TaskId) -> StoreResult<Vec<Task>> {
        let ids: Vec<String> = self
            .connection()
            .zrange(self.keys.children(parent), 0, -1)
            .await
            .map_err(unavailable)?;
        self.load(&ids).await
    }

    async fn owned_by(&self, owner: &str) -> StoreResult<Vec<Task>> {
        let mut ids: Vec<String> = self
            .connection()
            .smembers(self.keys.owned(owner))
            .await
            .map_err(unavailable)?;
        ids.sort();
        let tasks = self.load(&ids).await?;
        Ok(tasks
            .into_iter()
            .filter(|task| task.state.is_started() && task.owner == owner)
            .collect())
    }

    async fn history(&self, id: TaskId, after_version: u64) -> StoreResult<Option<Vec<Task>>> {
        let (entries, current, list): (Vec<String>, Option<String>, Vec<String>) = redis::pipe()
            .atomic()
            .lrange(self.keys.history(id), 0, -1)
            .hget(self.keys.task(id), "json")
            .lrange(self.keys.checkpoints(id), 0, -1)
            .query_async(&mut self.connection())
            .await
            .map_err(unavailable)?;
        let list_end = current.as_deref().map(window_end).transpose()?.unwrap_or(0);
        let versions = entries
            .iter()
            .map(|json| decode_record(json, &list, list_end))
            .collect::<StoreResult<Vec<Task>>>()?;
        Ok(history::versions_after(versions.iter(), after_version))
    }
}

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

#[async_trait]
impl TaskFeeds for RedisStore {
    async fn subscribe(&self, id: TaskId) -> StoreResult<Updates> {
        self.fanout
            .updates(Channel::Task(self.keys.task_channel(id)))
            .await
    }

    async fn subscribe_owner(&self, owner: &str) -> StoreResult<Updates> {
        self.fanout
            .updates(Channel::Owner(self.keys.owner_channel(owner)))
            .await
    }
}

#[async_trait]
impl TaskQueue for RedisStore {
    async fn oldest_pending(&self, after: Option<TaskId>, limit: usize) -> StoreResult<Vec<Task>> {
        let ids = self.ids_after(self.keys.pending(), after, limit).await?;
        Ok(self
            .load(&ids)
            .await?
            .into_iter()
            .filter(|task| task.state == TaskState::Pending)
            .collect())
    }

    async fn pending_tenants(&self) -> StoreResult<Vec<String>> {
        self.connection()
            .smembers(self.keys.pending_tenants())
            .await
            .map_err(unavailable)
    }

    async fn oldest_pending_of(
        &self,
        tenant: &str,
        after: Option<TaskId>,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        let ids = self
            .ids_after(self.keys.pending_of_tenant(tenant), after, limit)
            .await?;
        Ok(self
            .load(&ids)
            .await?
            .into_iter()
            .filter(|task| task.state == TaskState::Pending)
            .collect())
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
        self.connection()
            .zcard(self.keys.pending())
            .await
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests;
