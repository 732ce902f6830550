//! The records: creating a task (placed in its shard), the compare-and-set of every
//! change, reads of one task and listings across shards.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::try_join_all;
use redis::AsyncCommands;

use super::codec::*;
use super::keys::Shard;
use super::{LIST_BATCH, RedisStore, unavailable};
use crate::store::history::{self, HISTORY_LEN};
use crate::store::{ActiveFilter, Created, StoreError, StoreResult, Swap, TaskRecords};
use crate::task::budget::Spending;
use crate::task::{Task, TaskId, Usage};

impl RedisStore {
    /// The shard of a new task, with its id placed there (see `keys`): a child goes to its
    /// parent's, so a tree is in one slot; a task of a tenant with a cap on active tasks to
    /// the tenant's, so the cap is counted in one set; an idempotent start to its request
    /// id's, so a retry finds the key; any other where its id's random byte says. On one
    /// Redis there is one shard and the id is left alone.
    fn place(&self, task: &mut Task, capped: bool) -> Shard {
        if !self.keys.is_sharded() {
            return self.keys.shard_of(task.id);
        }
        let shard = if let Some(parent) = task.parent_id {
            self.keys.shard_of(parent)
        } else if capped {
            self.keys.shard_for_name(&task.tenant)
        } else if !task.request_id.is_empty() {
            self.keys
                .shard_for_name(&format!("{}:{}", task.tenant, task.request_id))
        } else {
            self.keys.shard_of(task.id)
        };
        task.id = self.keys.placed_in(task.id, shard);
        shard
    }

    /// The sorted set a listing with `filter` reads in `shard`: the smallest of the indexes
    /// the filter names (the active tasks of a kind or of a session, the children of a
    /// parent), or every active task. One round trip.
    async fn smallest_index(&self, shard: Shard, filter: &ActiveFilter) -> StoreResult<String> {
        let mut indexes = vec![self.keys.active(shard)];
        indexes.extend(
            filter
                .kind
                .as_deref()
                .map(|kind| self.keys.active_of_kind(shard, kind)),
        );
        indexes.extend(
            filter
                .session_id
                .as_deref()
                .map(|session| self.keys.active_of_session(shard, session)),
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

    /// Up to `limit` active tasks of one shard matching `filter`, after `after`.
    async fn list_active_in(
        &self,
        shard: Shard,
        filter: &ActiveFilter,
        after: Option<TaskId>,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        let index = self.smallest_index(shard, filter).await?;
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

    /// [`TaskRecords::spending`] of tasks of one shard: two small round trips rather than
    /// the whole records, the budgets, then the subtree usage in their dimensions of the
    /// tasks that have one.
    async fn spending_in(&self, ids: Vec<TaskId>) -> StoreResult<Vec<Spending>> {
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hget(self.keys.task(*id), "budget");
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
            pipe.cmd("HMGET").arg(self.keys.task(*id)).arg(fields);
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
}

#[async_trait]
impl TaskRecords for RedisStore {
    async fn create_within(&self, mut task: Task, max_active: Option<u64>) -> StoreResult<Created> {
        let shard = self.place(&mut task, max_active.is_some());
        let parent = task
            .parent_id
            .map(|p| self.keys.children(p))
            .unwrap_or_else(|| self.keys.no_children(shard));
        let reply: Vec<String> = self
            .create
            .key(self.keys.task(task.id))
            .key(self.keys.request(shard, &task.tenant, &task.request_id))
            .key(self.keys.active(shard))
            .key(self.keys.pending(shard))
            .key(parent)
            .key(self.keys.history(task.id))
            .key(self.keys.active_of_kind(shard, &task.kind))
            .key(self.keys.active_of_session(shard, &task.session_id))
            .key(
                self.keys
                    .cancelled_session(shard, &task.tenant, &task.session_id),
            )
            .key(self.keys.active_of_tenant(shard, &task.tenant))
            .key(self.keys.pending_of_tenant(shard, &task.tenant))
            .key(self.keys.pending_tenants(shard))
            .arg(encode_record(&task))
            .arg(task.id.to_string())
            .arg(task.version)
            .arg(state_name(task.state))
            .arg(flag(!task.request_id.is_empty()))
            .arg(flag(task.parent_id.is_some()))
            .arg(self.keys.task_prefix(shard))
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

    /// One mark per shard: a create reads the mark of the shard it writes to.
    async fn cancel_session(&self, tenant: &str, session: &str, ttl: Duration) -> StoreResult<()> {
        let _: Vec<()> = self
            .in_every_shard(|shard| {
                let mut set = redis::cmd("SET");
                set.arg(self.keys.cancelled_session(shard, tenant, session))
                    .arg("1")
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64);
                set
            })
            .await?;
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
        let shard = self.keys.shard_of(next.id);
        let mut script = self.swap.prepare_invoke();
        script
            .key(self.keys.task(next.id))
            .key(self.keys.pending(shard))
            .key(self.keys.active(shard))
            .key(self.keys.history(next.id))
            .key(self.keys.owned(shard, &next.owner))
            .key(self.keys.owners(shard))
            .key(self.keys.request(shard, &next.tenant, &next.request_id))
            .key(self.keys.children(next.id))
            .key(self.keys.checkpoints(next.id))
            .key(self.keys.active_of_kind(shard, &next.kind))
            .key(self.keys.active_of_session(shard, &next.session_id))
            .key(self.keys.active_of_tenant(shard, &next.tenant))
            .key(self.keys.pending_of_tenant(shard, &next.tenant))
            .key(self.keys.pending_tenants(shard))
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
            .arg(self.keys.owner_channel(shard, &next.owner))
            .arg(flag(!next.request_id.is_empty()))
            .arg(self.keys.owned(shard, ""))
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
            .arg(self.keys.owner_channel(shard, ""))
            .arg(&next.worker)
            .arg(&next.tenant)
            .arg(self.keys.publish_command())
            .arg(increment.len());
        for (dimension, amount) in increment {
            script.arg(dimension).arg(amount.to_string());
        }
        for ancestor in &next.ancestors {
            script.key(self.keys.task(*ancestor));
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
        // The ids are usually of one tree, so of one shard; any others are read shard by
        // shard, and the answer keeps the order of `ids`.
        let mut by_shard: HashMap<Shard, Vec<TaskId>> = HashMap::new();
        for id in ids {
            by_shard
                .entry(self.keys.shard_of(*id))
                .or_default()
                .push(*id);
        }
        let mut spendings: Vec<Spending> =
            try_join_all(by_shard.into_values().map(|ids| self.spending_in(ids)))
                .await?
                .into_iter()
                .flatten()
                .collect();
        spendings.sort_by_key(|spending| ids.iter().position(|id| *id == spending.task));
        Ok(spendings)
    }

    /// The shards' listings merged in id order; a parent filter reads only the parent's
    /// shard (a tree is in one).
    async fn list_active(
        &self,
        filter: &ActiveFilter,
        after: Option<TaskId>,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        let shards: Vec<Shard> = match filter.parent_id {
            Some(parent) => vec![self.keys.shard_of(parent)],
            None => self.keys.shards().collect(),
        };
        let per_shard = try_join_all(
            shards
                .into_iter()
                .map(|shard| self.list_active_in(shard, filter, after, limit)),
        )
        .await?;
        let mut found: Vec<Task> = per_shard.into_iter().flatten().collect();
        found.sort_by_key(|task| task.id);
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
        let per_shard: Vec<Vec<String>> = self
            .in_every_shard(|shard| redis::Cmd::smembers(self.keys.owned(shard, owner)))
            .await?;
        let mut ids: Vec<String> = per_shard.into_iter().flatten().collect();
        ids.sort();
        let tasks = self.load(&ids).await?;
        Ok(tasks
            .into_iter()
            .filter(|task| task.state.is_started() && task.owner == owner)
            .collect())
    }

    async fn history(&self, id: TaskId, after_version: u64) -> StoreResult<Option<Vec<Task>>> {
        let (entries, current, list): (Vec<String>, Option<String>, Vec<String>) = self
            .history
            .key(self.keys.history(id))
            .key(self.keys.task(id))
            .key(self.keys.checkpoints(id))
            .invoke_async(&mut self.connection())
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
