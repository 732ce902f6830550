//! The names of every Redis key and channel the store uses, and which shard each lives in
//! (see `DATA_MODEL.md`).
//!
//! On one Redis there is one shard whose tag is empty: the key names are those of earlier
//! versions. On a Redis Cluster there are `--redis-shards` shards, each a hash tag
//! (`{…}`) that Redis maps to one slot: a task, its history, checkpoints and children,
//! the indexes it is in and the queue it waits in share its shard's tag, so every script
//! touches one slot. A task's shard is written in its id (see [`Keys::shard_of`]), and a
//! child is placed in its parent's, so a whole tree — subtree cancels, budget roll-ups —
//! is in one slot. Listings, the queue and the owned sets are read shard by shard.

use crate::task::TaskId;

/// Redis Cluster's hash slots.
const SLOTS: u16 = 16384;
/// At most this many shards (`--redis-shards`): a task's shard is one byte of its id.
const MAX_SHARDS: usize = 256;

/// One shard of the key space: an index into [`Keys`]' tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Shard(usize);

/// Key and channel names, all under one prefix so deployments can share a Redis.
#[derive(Clone, Debug)]
pub(super) struct Keys {
    prefix: String,
    /// Each shard's hash tag, `{…}` on a cluster, empty on one Redis.
    tags: Vec<String>,
}

/// The hash slot of a tag's content, as Redis Cluster computes it (CRC16/XMODEM).
fn slot_of(tag: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % SLOTS
}

/// A hash tag for shard `index` of `count` whose slot is in the shard's even share of the
/// slots, so that shards spread evenly over masters that split the slots evenly (as
/// `redis-cli --cluster create` does). Every replica computes the same tags.
fn tag_for(index: usize, count: usize) -> String {
    let low = (index * SLOTS as usize / count) as u16;
    let high = ((index + 1) * SLOTS as usize / count) as u16;
    (0u32..)
        .map(|attempt| format!("r{index}.{attempt}"))
        .find(|tag| (low..high).contains(&slot_of(tag)))
        .map(|tag| format!("{{{tag}}}"))
        .expect("every range of slots is hit by some tag")
}

impl Keys {
    /// The keys of one Redis: one shard, the names of earlier versions.
    pub fn single(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            tags: vec![String::new()],
        }
    }

    /// The keys of a Redis Cluster with `count` shards (1 ..= [`MAX_SHARDS`]).
    pub fn sharded(prefix: &str, count: usize) -> Keys {
        let count = count.clamp(1, MAX_SHARDS);
        Keys {
            prefix: prefix.to_owned(),
            tags: (0..count).map(|index| tag_for(index, count)).collect(),
        }
    }

    /// Every shard, in order.
    pub fn shards(&self) -> impl Iterator<Item = Shard> + use<> {
        (0..self.tags.len()).map(Shard)
    }

    pub fn is_sharded(&self) -> bool {
        self.tags.len() > 1 || !self.tags[0].is_empty()
    }

    /// The shard of a task: the last byte of its id, modulo the shard count. (UUIDv7 ids
    /// end in random bits; [`Keys::placed_in`] sets that byte for a child or an
    /// idempotent start.)
    pub fn shard_of(&self, id: TaskId) -> Shard {
        Shard(id.as_bytes()[15] as usize % self.tags.len())
    }

    /// `id` with its shard byte set to `shard`: the id of a new task that must live there.
    pub fn placed_in(&self, id: TaskId, shard: Shard) -> TaskId {
        let mut bytes = *id.as_bytes();
        bytes[15] = shard.0 as u8;
        TaskId::from_bytes(bytes)
    }

    /// The shard a name hashes to (a tenant, or a tenant's request id): where its tasks go
    /// when they must all be in one place.
    pub fn shard_for_name(&self, name: &str) -> Shard {
        Shard(slot_of(name) as usize % self.tags.len())
    }

    /// `{p}{tag}name`: the tag first, so a key's slot is its shard's whatever follows.
    fn in_shard(&self, shard: Shard, name: std::fmt::Arguments<'_>) -> String {
        format!("{}{}{name}", self.prefix, self.tags[shard.0])
    }

    pub fn task(&self, id: TaskId) -> String {
        self.in_shard(self.shard_of(id), format_args!("task:{id}"))
    }
    pub fn task_prefix(&self, shard: Shard) -> String {
        self.in_shard(shard, format_args!("task:"))
    }
    /// Request ids are unique per tenant. Tenant names hold no `:`, so the first one
    /// after `request:` ends the tenant. In the shard of the task it names.
    pub fn request(&self, shard: Shard, tenant: &str, request_id: &str) -> String {
        self.in_shard(shard, format_args!("request:{tenant}:{request_id}"))
    }
    pub fn active(&self, shard: Shard) -> String {
        self.in_shard(shard, format_args!("active"))
    }
    pub fn active_of_kind(&self, shard: Shard, kind: &str) -> String {
        self.in_shard(shard, format_args!("active-kind:{kind}"))
    }
    pub fn active_of_tenant(&self, shard: Shard, tenant: &str) -> String {
        self.in_shard(shard, format_args!("active-tenant:{tenant}"))
    }
    pub fn pending_of_tenant(&self, shard: Shard, tenant: &str) -> String {
        self.in_shard(shard, format_args!("pending-tenant:{tenant}"))
    }
    pub fn pending_tenants(&self, shard: Shard) -> String {
        self.in_shard(shard, format_args!("pending-tenants"))
    }
    pub fn active_of_session(&self, shard: Shard, session: &str) -> String {
        self.in_shard(shard, format_args!("active-session:{session}"))
    }
    /// Sessions are per tenant, like request ids (tenant names hold no `:`). One mark per
    /// shard: a create reads its own shard's.
    pub fn cancelled_session(&self, shard: Shard, tenant: &str, session: &str) -> String {
        self.in_shard(shard, format_args!("cancelled-session:{tenant}:{session}"))
    }
    pub fn pending(&self, shard: Shard) -> String {
        self.in_shard(shard, format_args!("pending"))
    }
    pub fn children(&self, parent: TaskId) -> String {
        self.in_shard(self.shard_of(parent), format_args!("children:{parent}"))
    }
    /// The placeholder key a script is given for the children of no parent (it does not
    /// touch it), in the script's shard.
    pub fn no_children(&self, shard: Shard) -> String {
        self.in_shard(shard, format_args!("children:"))
    }
    pub fn history(&self, id: TaskId) -> String {
        self.in_shard(self.shard_of(id), format_args!("history:{id}"))
    }
    pub fn checkpoints(&self, id: TaskId) -> String {
        self.in_shard(self.shard_of(id), format_args!("checkpoints:{id}"))
    }
    /// The started, unfinished tasks of `owner` in one shard.
    pub fn owned(&self, shard: Shard, owner: &str) -> String {
        self.in_shard(shard, format_args!("owned:{owner}"))
    }
    pub fn owners(&self, shard: Shard) -> String {
        self.in_shard(shard, format_args!("owners"))
    }
    pub fn held(&self, what: &str, tenant: &str) -> String {
        format!("{}held-{what}:{tenant}", self.prefix)
    }
    pub fn start_bucket(&self, tenant: &str) -> String {
        format!("{}start-bucket:{tenant}", self.prefix)
    }
    /// A sorted set, not the set `{p}worker-kinds` of earlier versions: a new name, so an
    /// upgraded replica never meets a key of the old type.
    pub fn learned_kinds(&self) -> String {
        format!("{}learned-kinds", self.prefix)
    }
    pub fn lease(&self, replica: &str) -> String {
        format!("{}lease:{replica}", self.prefix)
    }
    pub fn task_channel(&self, id: TaskId) -> String {
        self.in_shard(self.shard_of(id), format_args!("events:task:{id}"))
    }
    /// A replica's control channel in one shard: `swap.lua` publishes a change there from
    /// the task's slot, so on a cluster each owner listens on one channel per shard.
    pub fn owner_channel(&self, shard: Shard, owner: &str) -> String {
        self.in_shard(shard, format_args!("events:owner:{owner}"))
    }
    /// Wake-ups of the queue: not sharded (a plain `PUBLISH` reaches every node), and
    /// rare (sent when a replica is too full to start what it queued).
    pub fn queue_channel(&self) -> String {
        format!("{}events:queue", self.prefix)
    }
    /// The publish command of the scripts: sharded pub/sub on a cluster, so a busy task's
    /// messages go to its shard's nodes only.
    pub fn publish_command(&self) -> &'static str {
        if self.is_sharded() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_redis_keeps_the_names_of_earlier_versions() {
        let keys = Keys::single("reins:");
        let id = TaskId::now_v7();
        let shard = keys.shard_of(id);
        assert_eq!(keys.task(id), format!("reins:task:{id}"));
        assert_eq!(keys.active(shard), "reins:active");
        assert_eq!(keys.owned(shard, "r1"), "reins:owned:r1");
        assert_eq!(keys.owner_channel(shard, "r1"), "reins:events:owner:r1");
        assert_eq!(keys.publish_command(), "PUBLISH");
    }

    #[test]
    fn shards_spread_evenly_over_the_slots() {
        let keys = Keys::sharded("reins:", 16);
        let slots: Vec<u16> = keys
            .tags
            .iter()
            .map(|tag| slot_of(tag.trim_matches(['{', '}'])))
            .collect();
        for (index, slot) in slots.iter().enumerate() {
            assert_eq!(*slot as usize * 16 / SLOTS as usize, index, "{slots:?}");
        }
    }

    #[test]
    fn a_placed_id_is_in_its_shard_and_keeps_its_time_order() {
        let keys = Keys::sharded("reins:", 16);
        let first = TaskId::now_v7();
        let shard = keys.shard_of(keys.placed_in(TaskId::now_v7(), Shard(11)));
        assert_eq!(shard, Shard(11));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = keys.placed_in(TaskId::now_v7(), Shard(0));
        assert!(later.to_string() > first.to_string());
    }

    #[test]
    fn every_key_of_a_task_has_its_shards_tag() {
        let keys = Keys::sharded("reins:", 8);
        let id = keys.placed_in(TaskId::now_v7(), Shard(5));
        let tag = &keys.tags[5];
        for key in [
            keys.task(id),
            keys.history(id),
            keys.checkpoints(id),
            keys.children(id),
            keys.task_channel(id),
            keys.active(keys.shard_of(id)),
        ] {
            assert!(key.starts_with(&format!("reins:{tag}")), "{key}");
        }
    }
}
