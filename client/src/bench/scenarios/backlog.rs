//! `backlog`: `--backlog` PENDING tasks in one Redis, and what they do to the calls. Needs
//! `--redis`; only when named. How the tasks come to wait is `--backlog-wait`:
//!
//! - `room` (the usual way a queue builds up): the replicas are filled first with idle
//!   `sleep` tasks (one step of an hour), [`FILL_BATCH`] at a time until no start of a
//!   batch runs, and the backlog is more of them waiting for room. The dispatch of the
//!   next task: one running task is hard-cancelled through replica A and the oldest
//!   PENDING task is followed until it starts (call → its `started_at`), [`PROBES`] times.
//! - `worker`: tasks of a kind that no connected worker serves (learned from a worker that
//!   connects once and leaves). Then a worker for it connects, with one slot: the time to
//!   its first assignment, then [`PROBES`] times from completing a task to the next
//!   assignment; last, whether a short `sleep` task still starts within
//!   [`OTHER_KIND_PATIENCE`] behind the backlog (dispatch rounds look only so deep).
//!
//! Either way: Redis bytes per PENDING task (as `capacity` counts them, the first of the
//! backlog),
//! how fast the backlog was queued ([`QUEUE_CONCURRENCY`] StartTasks at once over the
//! replicas) and `used_memory` per queued task; then, one call at a time through A,
//! [`PROBES`] ListActive first pages and StartTasks to the back of the queue. The backlog
//! is left in Redis (cancelling a million tasks takes minutes): run it last, on a
//! throwaway Redis, as `client/bench/run.sh` does.

use std::time::{Duration, Instant};

use clap::ValueEnum;
use redis::aio::MultiplexedConnection;
use reins_client::StartTask;
use reins_client::proto::{ListActiveRequest, TaskState};
use serde_json::json;

use super::capacity::{Sizes, memory_of, start_many, used_memory};
use super::dispatch::dispatch_once;
use crate::bench::counters;
use crate::bench::report::{Latencies, Report, Row, megabytes};
use crate::bench::worker::BenchWorker;
use crate::bench::{Bench, BenchError, BenchResult, tasks};

/// Why the backlog's tasks wait (`--backlog-wait`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Wait {
    /// Every replica is full.
    Room,
    /// No connected worker serves their kind.
    Worker,
}

/// The kind of `--backlog-wait worker`, which no worker serves while it is queued.
const QUEUED_KIND: &str = "reins-bench-queued";
/// Idle tasks started at once while the replicas are being filled.
const FILL_BATCH: usize = 256;
/// At most this many idle tasks fill the replicas (a cluster that never fills up).
const MOST_FILLERS: usize = 200_000;
/// StartTask calls in flight while the backlog is queued.
const QUEUE_CONCURRENCY: usize = 512;
/// Calls of each kind measured against the backlog (fewer with a smaller `--count`).
const PROBES: usize = 100;
/// How long a short task of another kind may take to start behind a `worker` backlog.
const OTHER_KIND_PATIENCE: Duration = Duration::from_secs(5);

pub async fn run(bench: &Bench) -> BenchResult<Report> {
    let mut redis = counters::redis(bench, "backlog").await?;
    let mut report = Report::default();
    let wait = bench.args.backlog_wait;
    // The running fillers, and the fill's starts that stayed PENDING (first in the queue).
    let (fillers, mut backlog, queued): (Vec<String>, Vec<String>, fn() -> StartTask) = match wait {
        Wait::Room => {
            let (running, pending) = fill(bench, &mut report).await?;
            (running, pending, idle)
        }
        Wait::Worker => {
            learn_queued_kind(bench).await?;
            let queued = || tasks::bench_task(QUEUED_KIND, json!({}));
            (Vec::new(), Vec::new(), queued)
        }
    };
    let count = Sizes::of(bench).sample.min(bench.args.backlog.max(1));
    let (keys, used, sample) = memory_of(bench, count, &mut redis, queued, None).await?;
    report.note(format!(
        "backlog: Redis bytes per PENDING task: {keys:.0} in its keys (MEMORY USAGE), {used:.0} of used_memory growth ({count} tasks)"
    ));
    backlog.extend(sample.into_iter().map(|task| task.id));
    queue(bench, &mut redis, &mut report, queued, &mut backlog).await?;
    // Queue order: ids are UUIDv7, and the queue is sorted by id.
    backlog.sort_unstable();

    let a = bench.cluster.first().client();
    let mut list = Latencies::default();
    let mut listed = 0;
    let probes = bench
        .args
        .count
        .map_or(PROBES, |n| (n as usize).clamp(1, PROBES));
    for _ in 0..probes {
        let called = Instant::now();
        let page = ListActiveRequest {
            page_size: 100,
            ..ListActiveRequest::default()
        };
        listed = a.list(page).await?.tasks.len();
        list.record(called.elapsed());
    }
    report.row(Row::new(
        "backlog",
        format!("ListActive page 1 ({listed} tasks)"),
        list,
    ));
    let mut start = Latencies::default();
    for _ in 0..probes {
        let called = Instant::now();
        a.start(queued()).await?;
        start.record(called.elapsed());
    }
    report.row(Row::new("backlog", "StartTask, to the back", start));
    match wait {
        Wait::Room => next_after_room(bench, probes, &mut report, &fillers, &backlog).await?,
        Wait::Worker => next_for_worker(bench, probes, &mut report).await?,
    }
    report.note(format!(
        "backlog: the rows were measured one call at a time through {} with {} tasks PENDING ({wait:?}); the backlog is left in Redis",
        bench.cluster.first().name(),
        backlog.len()
    ));
    Ok(report)
}

/// A task that holds its place until cancelled: one step of an hour, no write meanwhile.
fn idle() -> StartTask {
    tasks::sleep(1, 3_600_000).description("reins-bench: keeps a place taken")
}

/// Fills every replica with idle tasks, until no start of a batch runs: the ids of those
/// that ran when started, and of those that did not (most still PENDING, first in the
/// queue; a few taken a moment later by a replica that still had room).
async fn fill(bench: &Bench, report: &mut Report) -> BenchResult<(Vec<String>, Vec<String>)> {
    let began = Instant::now();
    let mut fillers = Vec::new();
    let mut waiting = Vec::new();
    while fillers.len() < MOST_FILLERS {
        let (batch, failed) = start_many(bench, FILL_BATCH as u64, FILL_BATCH, idle, None).await;
        if failed > 0 {
            return Err(BenchError::Unexpected(format!(
                "{failed} idle tasks did not start"
            )));
        }
        // Through a full replica a start stays PENDING even if another one has room (it
        // takes the task a moment later): full is when no start of a batch ran.
        let (pending, running): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|task| task.state() == TaskState::Pending);
        waiting.extend(pending.into_iter().map(|task| task.id));
        if running.is_empty() {
            report.note(format!(
                "backlog: the replicas were full with about {} idle tasks running (filled in {:.1} s)",
                fillers.len(),
                began.elapsed().as_secs_f64()
            ));
            return Ok((fillers, waiting));
        }
        fillers.extend(running.into_iter().map(|task| task.id));
    }
    Err(BenchError::Unexpected(format!(
        "the replicas still had room after {MOST_FILLERS} idle tasks"
    )))
}

/// A worker serving [`QUEUED_KIND`] says hello and leaves: the kind is valid for StartTask
/// (for `--worker-kind-ttl`) and nothing runs it.
async fn learn_queued_kind(bench: &Bench) -> BenchResult<()> {
    let forever = Duration::from_secs(3600);
    drop(BenchWorker::connect(bench.cluster.first(), QUEUED_KIND, 1, forever).await?);
    // The replica sees the stream end at once; until then it could assign a task.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

/// Queues tasks until `--backlog` wait, their ids added to `backlog`.
async fn queue(
    bench: &Bench,
    redis: &mut MultiplexedConnection,
    report: &mut Report,
    queued: fn() -> StartTask,
    backlog: &mut Vec<String>,
) -> BenchResult<()> {
    let more = bench.args.backlog.saturating_sub(backlog.len() as u64);
    let before = used_memory(redis).await?;
    let began = Instant::now();
    let (started, failed) = start_many(bench, more, QUEUE_CONCURRENCY, queued, None).await;
    let took = began.elapsed().as_secs_f64();
    let after = used_memory(redis).await?;
    let still_pending = started
        .iter()
        .filter(|task| task.state() == TaskState::Pending)
        .count();
    backlog.extend(started.into_iter().map(|task| task.id));
    report.note(format!(
        "backlog: {more} more queued in {took:.1} s ({:.0}/s, {failed} failed, {still_pending} PENDING when answered), {:.0} bytes of used_memory each; used_memory {} MB",
        more as f64 / took,
        (after - before) / more.max(1) as f64,
        megabytes(after as u64),
    ));
    Ok(())
}

/// `room`: a place freed, [`PROBES`] times, and the oldest PENDING task seen started.
async fn next_after_room(
    bench: &Bench,
    probes: usize,
    report: &mut Report,
    fillers: &[String],
    backlog: &[String],
) -> BenchResult<()> {
    let a = bench.cluster.first().client();
    let mut next = Latencies::default();
    // The oldest tasks of the backlog took the places the fill left (it stops when one
    // replica is full): the first still PENDING is the next to start.
    let mut waiting = backlog.iter();
    for filler in fillers.iter().take(probes) {
        let oldest = loop {
            let Some(id) = waiting.next() else {
                return Err(BenchError::Unexpected("no PENDING task left".into()));
            };
            let task = a.check(id.clone()).await?;
            if task.state() == TaskState::Pending {
                break task;
            }
        };
        let called = tasks::now_unix_nanos();
        a.hard_cancel(filler.clone(), "reins-bench: a place freed")
            .await?;
        let task = tasks::wait_for(a, oldest, tasks::has_started).await?;
        let started = tasks::unix_nanos(task.started_at.as_ref()).unwrap_or(called);
        next.record(tasks::span(called, started));
    }
    report.row(Row::new("backlog", "HardCancel -> oldest started", next));
    Ok(())
}

/// `worker`: a worker for the backlog's kind connects, then a short task of another kind.
async fn next_for_worker(bench: &Bench, probes: usize, report: &mut Report) -> BenchResult<()> {
    let a = bench.cluster.first();
    let worker = BenchWorker::connect(a, QUEUED_KIND, 1, Duration::from_secs(3600)).await?;
    let connected = tasks::now_unix_nanos();
    let (mut running, first) = worker
        .next_assigned(tasks::STATE_TIMEOUT)
        .await
        .ok_or_else(|| BenchError::Unexpected("the backlog's worker got no task".into()))?;
    let mut next = Latencies::default();
    for _ in 0..probes {
        let freed = tasks::now_unix_nanos();
        worker.complete(&running);
        let Some((task, at)) = worker.next_assigned(tasks::STATE_TIMEOUT).await else {
            break;
        };
        next.record(tasks::span(freed, at));
        running = task;
    }
    report.row(Row::new(
        "backlog",
        "worker: complete -> next assigned",
        next,
    ));
    drop(worker);
    report.note(format!(
        "backlog: a worker for the backlog's kind got its first task {:.1} ms after its welcome",
        tasks::span(connected, first).as_secs_f64() * 1e3
    ));
    let other =
        match tokio::time::timeout(OTHER_KIND_PATIENCE, dispatch_once(a.client().clone())).await {
            Ok(dispatched) => format!(
                "started {:.1} ms after the call",
                dispatched?.seen.as_secs_f64() * 1e3
            ),
            Err(_) => format!(
                "did not start within {}",
                humantime::format_duration(OTHER_KIND_PATIENCE)
            ),
        };
    report.note(format!(
        "backlog: a short `sleep` task started through {} behind the backlog {other}",
        a.name()
    ));
    Ok(())
}
