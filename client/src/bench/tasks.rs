//! Small helpers about tasks shared by the scenarios: the tasks they start, their states,
//! waiting for a state through WatchTask, and server timestamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;
use reins_client::proto::Task;
use reins_client::{Client, StartTask, WatchOptions};
use serde_json::json;
use tokio_stream::StreamExt;

use super::{BenchError, BenchResult};

/// How long a scenario waits for a task to reach a state before giving up on it.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(30);

/// A task of `kind`, labelled as the bench's so it can be told apart in listings.
pub fn bench_task(kind: &str, params: serde_json::Value) -> StartTask {
    StartTask::new(kind)
        .params(params)
        .label("origin", "reins-bench")
}

/// A `sleep` task of `steps` steps of `step_ms` each.
pub fn sleep(steps: u64, step_ms: u64) -> StartTask {
    bench_task("sleep", json!({ "steps": steps, "step_ms": step_ms }))
}

/// A `sleep` task that finishes as soon as it starts.
pub fn instant() -> StartTask {
    sleep(0, 0)
}

/// RUNNING or past it (a short task may be over by the time it is seen).
pub fn has_started(task: &Task) -> bool {
    task.started_at.is_some()
}

/// The task once `reached` holds: `task` itself if it already does, else the first
/// version that does, watched from the version after `task`'s.
pub async fn wait_for(
    client: &Client,
    task: Task,
    reached: fn(&Task) -> bool,
) -> BenchResult<Task> {
    if reached(&task) {
        return Ok(task);
    }
    let options = WatchOptions {
        after_version: task.version,
        ..WatchOptions::default()
    };
    let watch = async {
        let mut events = client.watch(task.id.clone(), options).await?;
        while let Some(event) = events.next().await {
            if let Some(seen) = event?.task
                && reached(&seen)
            {
                return Ok(seen);
            }
        }
        Err(BenchError::Unexpected(format!(
            "the watch of task {} ended before the awaited state",
            task.id
        )))
    };
    tokio::time::timeout(STATE_TIMEOUT, watch)
        .await
        .map_err(|_| {
            BenchError::Unexpected(format!(
                "task {} did not reach the awaited state within {STATE_TIMEOUT:?}",
                task.id
            ))
        })?
}

/// Nanoseconds since the Unix epoch of a server timestamp.
pub fn unix_nanos(timestamp: Option<&Timestamp>) -> Option<i128> {
    timestamp.map(|t| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos))
}

/// Nanoseconds since the Unix epoch, now, on this machine's clock (the servers' clock too
/// when they run here).
pub fn now_unix_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as i128)
}

/// A non-negative span between two instants in nanoseconds (a negative one, from clock
/// resolution, counts as zero).
pub fn span(from_nanos: i128, to_nanos: i128) -> Duration {
    Duration::from_nanos((to_nanos - from_nanos).clamp(0, i128::from(u64::MAX)) as u64)
}
