//! A task's checkpoints (`partial_results`): bounded, and cheap to carry from version to
//! version.
//!
//! **Bounded.** A task keeps at most [`CheckpointLimits::max_count`] checkpoints of at most
//! [`CheckpointLimits::max_bytes`] bytes (their protobuf encoding) in total. When a new checkpoint would exceed
//! either, the *oldest* are dropped and counted (`Task::partial_results_dropped`): for an
//! agent the latest partial findings matter most, and refusing a report would make running
//! code fail for something the server can absorb. A single checkpoint larger than
//! `max_bytes` is never stored; it is counted as dropped and the rest of the report
//! (progress) still applies. With the other record limits this keeps every record, and so
//! every CheckTask / WatchTask / HardCancel / ListActive reply, under the message size.
//!
//! **Cheap versions.** Every change makes a new version of the record (the state machine
//! clones it; the memory store keeps the last 100 versions). The checkpoints live in a
//! shared append-only log and a version holds only a window `[start, end)` into it, so
//! cloning a record is O(1) whatever the number of checkpoints, and the versions of a task
//! share the checkpoint values instead of each holding a copy. Appending from the newest
//! version pushes onto the log; appending from an older one (a lost compare-and-set race)
//! copies its window to a new log first. When the dropped prefix of the log is at least as
//! large as the window (in count or in bytes), the window is copied to a fresh log, so a
//! log holds at most about twice the limits and appends stay amortised O(1).

use std::fmt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Json;

/// How many checkpoints a task keeps, and how many bytes they may hold in total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointLimits {
    pub max_count: usize,
    pub max_bytes: u64,
}

impl CheckpointLimits {
    /// `--max-checkpoints` and `--max-checkpoint-bytes` defaults.
    pub const DEFAULT: CheckpointLimits = CheckpointLimits {
        max_count: 1000,
        max_bytes: 1024 * 1024,
    };
}

impl Default for CheckpointLimits {
    fn default() -> Self {
        CheckpointLimits::DEFAULT
    }
}

/// The size a checkpoint counts for: its protobuf encoding as a `google.protobuf.Value`,
/// what travels in every message that carries the task and what `--max-message-size`
/// counts (for lists of small numbers up to 5.5× its JSON, so JSON bytes could not bound a
/// record).
pub fn json_size(value: &Json) -> u64 {
    crate::limits::wire_len(value) as u64
}

struct Entry {
    value: Arc<Json>,
    /// Bytes of this entry and every one before it in the log.
    cumulative: u64,
}

#[derive(Default)]
struct Log {
    entries: Mutex<Vec<Entry>>,
}

/// The checkpoints of one version of a task, oldest first. Serialized as a JSON array.
#[derive(Clone, Default)]
pub struct Checkpoints {
    log: Arc<Log>,
    /// Position of the log's first entry among every checkpoint the task ever kept (the
    /// Redis store keeps its checkpoint list by these positions).
    base: u64,
    start: usize,
    end: usize,
}

impl Checkpoints {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    fn cumulative(entries: &[Entry], index: usize) -> u64 {
        index.checked_sub(1).map_or(0, |i| entries[i].cumulative)
    }

    /// Total bytes of the checkpoints (see [`json_size`]).
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        let entries = self.log.entries.lock().unwrap();
        Self::cumulative(&entries, self.end) - Self::cumulative(&entries, self.start)
    }

    /// The checkpoints, oldest first (cheap: the values are shared).
    pub fn values(&self) -> Vec<Arc<Json>> {
        let entries = self.log.entries.lock().unwrap();
        entries[self.start..self.end]
            .iter()
            .map(|e| Arc::clone(&e.value))
            .collect()
    }

    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<Json> {
        self.values().iter().map(|v| Json::clone(v)).collect()
    }

    /// How many checkpoints the task has kept so far, those dropped since included: the
    /// position just past the newest.
    pub fn end_position(&self) -> u64 {
        self.base + self.end as u64
    }

    /// Whether two versions share their checkpoint storage (no copy was made).
    pub fn shares_storage_with(&self, other: &Checkpoints) -> bool {
        Arc::ptr_eq(&self.log, &other.log)
    }

    /// Appends `value` within `limits`; returns how many checkpoints were dropped (the
    /// oldest, or `value` itself when it alone exceeds `limits.max_bytes`).
    pub fn push(&mut self, value: Json, limits: CheckpointLimits) -> u64 {
        let size = json_size(&value);
        if size > limits.max_bytes || limits.max_count == 0 {
            return 1;
        }
        let mut entries = self.log.entries.lock().unwrap();
        if entries.len() != self.end {
            // Another version appended after ours: start a log of our own.
            let fresh = self.copy(&entries, self.start, self.end);
            drop(entries);
            *self = fresh;
            return self.push(value, limits);
        }
        let before = Self::cumulative(&entries, self.end);
        entries.push(Entry {
            value: Arc::new(value),
            cumulative: before + size,
        });
        self.end += 1;
        let mut dropped = 0;
        let total = |entries: &[Entry], start: usize, end: usize| {
            Self::cumulative(entries, end) - Self::cumulative(entries, start)
        };
        while self.end - self.start > limits.max_count
            || total(&entries, self.start, self.end) > limits.max_bytes
        {
            self.start += 1;
            dropped += 1;
        }
        let dead_bytes = Self::cumulative(&entries, self.start);
        let live_bytes = total(&entries, self.start, self.end);
        if self.start > 0 && (self.start >= self.end - self.start || dead_bytes >= live_bytes) {
            let fresh = self.copy(&entries, self.start, self.end);
            drop(entries);
            *self = fresh;
        }
        dropped
    }

    fn copy(&self, entries: &[Entry], start: usize, end: usize) -> Checkpoints {
        let first = Self::cumulative(entries, start);
        let entries = entries[start..end]
            .iter()
            .map(|e| Entry {
                value: Arc::clone(&e.value),
                cumulative: e.cumulative - first,
            })
            .collect::<Vec<_>>();
        Checkpoints {
            base: self.base + start as u64,
            start: 0,
            end: entries.len(),
            log: Arc::new(Log {
                entries: Mutex::new(entries),
            }),
        }
    }

    /// Checkpoints as stored (already within the limits that applied when they were made).
    pub fn from_values(values: impl IntoIterator<Item = Json>) -> Checkpoints {
        Checkpoints::from_values_at(None, values)
    }

    /// Stored checkpoints whose newest is just before `end_position` (`None`: their count).
    pub fn from_values_at(
        end_position: Option<u64>,
        values: impl IntoIterator<Item = Json>,
    ) -> Checkpoints {
        let mut cumulative = 0;
        let entries = values
            .into_iter()
            .map(|value| {
                cumulative += json_size(&value);
                Entry {
                    value: Arc::new(value),
                    cumulative,
                }
            })
            .collect::<Vec<_>>();
        let len = entries.len() as u64;
        Checkpoints {
            base: end_position.unwrap_or(len).saturating_sub(len),
            start: 0,
            end: entries.len(),
            log: Arc::new(Log {
                entries: Mutex::new(entries),
            }),
        }
    }
}

impl PartialEq for Checkpoints {
    fn eq(&self, other: &Checkpoints) -> bool {
        (self.shares_storage_with(other) && self.start == other.start && self.end == other.end)
            || self.values() == other.values()
    }
}

impl PartialEq<Vec<Json>> for Checkpoints {
    fn eq(&self, other: &Vec<Json>) -> bool {
        self.values().iter().map(|value| &**value).eq(other.iter())
    }
}

impl fmt::Debug for Checkpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.values()).finish()
    }
}

impl Serialize for Checkpoints {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.values().iter().map(|value| &**value))
    }
}

impl<'de> Deserialize<'de> for Checkpoints {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<Json>::deserialize(deserializer).map(Checkpoints::from_values)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const LIMITS: CheckpointLimits = CheckpointLimits {
        max_count: 3,
        max_bytes: 100,
    };

    fn steps(checkpoints: &Checkpoints) -> Vec<Json> {
        checkpoints.to_vec()
    }

    #[test]
    fn keeps_the_newest_within_the_count_and_counts_the_dropped() {
        let mut cp = Checkpoints::default();
        let dropped: u64 = (0..10).map(|i| cp.push(json!(i), LIMITS)).sum();
        assert_eq!(dropped, 7);
        assert_eq!(steps(&cp), vec![json!(7), json!(8), json!(9)]);
        assert_eq!(cp.bytes(), 3 * 9, "a number is a tag and a double");
    }

    #[test]
    fn keeps_the_newest_within_the_bytes() {
        let mut cp = Checkpoints::default();
        let forty = json!("x".repeat(38)); // 40 bytes with its tag and length
        assert_eq!(json_size(&forty), 40);
        assert_eq!(cp.push(forty.clone(), LIMITS), 0);
        assert_eq!(cp.push(forty.clone(), LIMITS), 0);
        assert_eq!(cp.push(json!(1), LIMITS), 0);
        assert_eq!(cp.bytes(), 89);
        assert_eq!(
            cp.push(forty.clone(), LIMITS),
            1,
            "129 bytes: the oldest goes"
        );
        assert_eq!(steps(&cp), vec![forty.clone(), json!(1), forty]);
        assert!(cp.bytes() <= LIMITS.max_bytes);
    }

    #[test]
    fn a_checkpoint_larger_than_the_budget_is_dropped_alone() {
        let mut cp = Checkpoints::default();
        cp.push(json!(1), LIMITS);
        assert_eq!(cp.push(json!("y".repeat(200)), LIMITS), 1);
        assert_eq!(steps(&cp), vec![json!(1)]);
    }

    #[test]
    fn versions_share_the_log_and_an_older_version_forks() {
        let mut v1 = Checkpoints::default();
        v1.push(json!(1), LIMITS);
        let mut v2 = v1.clone();
        v2.push(json!(2), LIMITS);
        assert!(
            v2.shares_storage_with(&v1),
            "appending from the newest copies nothing"
        );
        assert_eq!(steps(&v1), vec![json!(1)], "the older version is unchanged");
        let mut lost_race = v1.clone();
        lost_race.push(json!(3), LIMITS);
        assert!(!lost_race.shares_storage_with(&v1));
        assert_eq!(steps(&lost_race), vec![json!(1), json!(3)]);
        assert_eq!(steps(&v2), vec![json!(1), json!(2)]);
    }

    #[test]
    fn the_log_stays_within_about_twice_the_window() {
        let mut cp = Checkpoints::default();
        for i in 0..10_000 {
            cp.push(json!(i), LIMITS);
            assert!(cp.log.entries.lock().unwrap().len() <= 2 * LIMITS.max_count + 1);
        }
        assert_eq!(steps(&cp), vec![json!(9997), json!(9998), json!(9999)]);
        assert_eq!(cp.bytes(), 27);
        assert_eq!(cp.end_position(), 10_000, "positions survive compaction");
        cp.push(json!("z".repeat(200)), LIMITS);
        assert_eq!(
            cp.end_position(),
            10_000,
            "a checkpoint not kept takes no position"
        );
    }

    #[test]
    fn serializes_as_an_array() {
        let mut cp = Checkpoints::default();
        for i in 0..5 {
            cp.push(json!({ "step": i }), LIMITS);
        }
        let text = serde_json::to_string(&cp).unwrap();
        assert_eq!(text, r#"[{"step":2},{"step":3},{"step":4}]"#);
        let back: Checkpoints = serde_json::from_str(&text).unwrap();
        assert_eq!(back, cp);
        assert_eq!(back.bytes(), cp.bytes());
    }

    proptest::proptest! {
        /// Against a plain vector: the same newest checkpoints and every report kept or
        /// counted as dropped, whichever versions are appended to (forks included).
        #[test]
        fn behaves_like_a_vector_of_the_newest(
            limits in (1usize..6, 1u64..60),
            pushes in proptest::collection::vec((0usize..30, 0usize..4), 1..80),
        ) {
            let limits = CheckpointLimits { max_count: limits.0, max_bytes: limits.1 };
            // (checkpoints, model, dropped, reported) of every version made so far.
            let mut versions = vec![(Checkpoints::default(), Vec::<Json>::new(), 0u64, 0u64)];
            for (i, (len, back)) in pushes.into_iter().enumerate() {
                let from = versions.len().saturating_sub(1 + back);
                let (mut cp, mut model, mut dropped, reported) = versions[from].clone();
                let value = json!(format!("{i}{}", "x".repeat(len)));
                dropped += cp.push(value.clone(), limits);
                if json_size(&value) <= limits.max_bytes {
                    model.push(value);
                    while model.len() > limits.max_count
                        || model.iter().map(json_size).sum::<u64>() > limits.max_bytes
                    {
                        model.remove(0);
                    }
                }
                proptest::prop_assert_eq!(cp.to_vec(), model.clone());
                proptest::prop_assert_eq!(cp.bytes(), model.iter().map(json_size).sum::<u64>());
                proptest::prop_assert_eq!(dropped + cp.len() as u64, reported + 1);
                versions.push((cp, model, dropped, reported + 1));
            }
            for (cp, model, _, _) in &versions {
                proptest::prop_assert_eq!(&cp.to_vec(), model, "older versions are unchanged");
            }
        }
    }
}
