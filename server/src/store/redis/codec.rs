//! How records travel: the JSON of a task as the hash, the history and the published
//! messages hold it (its checkpoints in their own list, see `DATA_MODEL.md`), and the
//! replies of the scripts.

use std::collections::HashMap;

use super::super::{StoreError, StoreResult, Swap};
use crate::task::budget::Spending;
use crate::task::{Checkpoints, Task, TaskId, TaskState, Usage};

pub(super) fn decode(json: &str) -> StoreResult<Task> {
    serde_json::from_str(json).map_err(StoreError::Corrupt)
}

/// Where a stored record's checkpoints are: the key of the JSON field naming the window
/// `[end - len, end)` of positions in `{p}checkpoints:{id}`.
pub(super) const WINDOW: &str = "checkpoints_window";

/// The record as the hash and the history hold it: without its checkpoints (they live in
/// their own list, see DATA_MODEL.md), with the window of positions they occupy, so a
/// version costs the same whatever the number of checkpoints.
pub(super) fn encode_record(task: &Task) -> String {
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
pub(super) fn encode_published(task: &Task) -> String {
    let mut value = serde_json::to_value(task).expect("a task always serializes");
    let end = task.partial_results.end_position();
    value[WINDOW] = serde_json::json!([end, task.partial_results.values().len()]);
    value.to_string()
}

/// A record as published ([`encode_published`]), its checkpoints at their positions.
pub(super) fn decode_published(json: &str) -> serde_json::Result<Task> {
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
pub(super) fn decode_record(json: &str, list: &[String], list_end: u64) -> StoreResult<Task> {
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
pub(super) fn window_end(json: &str) -> StoreResult<u64> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(StoreError::Corrupt)?;
    Ok(value[WINDOW][0].as_u64().unwrap_or(0))
}

/// Prefix of the task hash fields that hold its subtree's usage, one per dimension: moved
/// by `swap.lua`'s roll-up without a new version, so they are not in the record's JSON.
pub(super) const SUBTREE: &str = "s:";

/// The subtree usage held in a task hash's `s:<dimension>` fields.
pub(super) fn subtree_usage(hash: &HashMap<String, String>) -> Usage {
    hash.iter()
        .filter_map(|(field, value)| {
            let dimension = field.strip_prefix(SUBTREE)?;
            Some((dimension.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The budget as `create.lua` stores it for `swap.lua`: a JSON object of the limits as
/// strings, which come back exact (Lua would print its numbers with 14 digits).
pub(super) fn budget_field(budget: &Usage) -> String {
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
pub(super) fn number(value: &redis::Value) -> Option<f64> {
    match value {
        redis::Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        redis::Value::SimpleString(text) => text.parse().ok(),
        redis::Value::Double(number) => Some(*number),
        redis::Value::Int(number) => Some(*number as f64),
        _ => None,
    }
}

pub(super) fn text(value: &redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        redis::Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// `swap.lua`'s reply: `'ok'`, `'ok-childless'`, `'conflict'`, `'missing'`, or after a roll-up `{'ok',
/// spending…}` with each spending `{chain index, (dimension, limit, before, after)…}`.
pub(super) fn swap_reply(reply: &redis::Value, chain: &[TaskId]) -> (Swap, Vec<Spending>) {
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

pub(super) fn state_name(state: TaskState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .expect("states serialize as strings")
}

pub(super) fn flag(value: bool) -> &'static str {
    if value { "1" } else { "0" }
}
