//! `capacity`: what tasks cost, for sizing a deployment (`docs/capacity.md`; the queue is
//! `backlog`'s). Needs `--redis`; only when named. In order:
//!
//! 1. **Replica memory**: replica A's RSS before and after [`Sizes::workers`] workers connect to
//!    it, then before and after [`Sizes::running`] idle `sleep` tasks (one step of an hour)
//!    started through it.
//! 2. **Redis memory per finished task**: [`Sizes::sample`] `sleep` tasks of 0 steps, then
//!    as many of 10 steps (10 checkpoints), run to COMPLETED, counted as `MEMORY USAGE`
//!    summed over each task's own keys (`{p}task:`, `{p}history:`, `{p}checkpoints:`), and
//!    as the growth of `used_memory` per task, which adds its entries in the indexes.
//! 3. **CPU per short task**: [`Sizes::short`] short tasks, `--in-flight` at once over the
//!    replicas: the CPU time of Redis (`INFO cpu`) and of the replicas (`/proc`) per task,
//!    less their idle use, hence tasks/s per core of each.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use reins_client::StartTask;
use reins_client::proto::{CancelMode, CancelTasksRequest, Task};

use crate::bench::counters::{self, info_field};
use crate::bench::report::{Report, megabytes};
use crate::bench::worker::BenchWorker;
use crate::bench::{Bench, BenchError, BenchResult, process, tasks};

/// The kind of the idle workers counted in replica memory (no task of it is started).
const IDLE_KIND: &str = "reins-bench-idle";
/// How many of each thing is measured: these, or `--count` of each (a quick run).
pub(super) struct Sizes {
    /// Tasks measured for memory per task.
    pub sample: u64,
    /// Idle running tasks on replica A for its memory per running task.
    running: u64,
    /// Workers connected to replica A for its memory per worker.
    workers: u32,
    /// Short tasks run for the CPU per task.
    short: u64,
}

impl Sizes {
    pub(super) fn of(bench: &Bench) -> Sizes {
        match bench.args.count {
            Some(n) => Sizes {
                sample: n.max(1),
                running: n.max(1),
                workers: n.clamp(1, 1_000) as u32,
                short: n.max(1),
            },
            None => Sizes {
                sample: 1_000,
                running: 2_000,
                workers: 200,
                short: 3_000,
            },
        }
    }
}
/// How long the idle CPU use is measured.
const IDLE: Duration = Duration::from_secs(2);
/// StartTask calls in flight while tasks are created.
const START_CONCURRENCY: usize = 256;

pub async fn run(bench: &Bench) -> BenchResult<Report> {
    let mut redis = counters::redis(bench, "capacity").await?;
    let mut report = Report::default();
    // First, while the replica has freed little memory its allocator could hand out again.
    let sizes = Sizes::of(bench);
    replica_memory(bench, &sizes, &mut report).await?;
    finished_memory(bench, &sizes, &mut redis, &mut report).await?;
    cpu_per_task(bench, &sizes, &mut redis, &mut report).await?;
    Ok(report)
}

/// Starts `count` tasks made by `make` through the replicas in turn, each followed until
/// `until` holds (`None`: not followed); the tasks, and how many failed.
pub(super) async fn start_many(
    bench: &Bench,
    count: u64,
    concurrency: usize,
    make: impl Fn() -> StartTask,
    until: Option<fn(&Task) -> bool>,
) -> (Vec<Task>, u64) {
    let cluster = &bench.cluster;
    let began = Instant::now();
    let results: Vec<BenchResult<Task>> = futures_util::stream::iter(0..count)
        .map(|n| {
            let client = cluster.nth(n).client().clone();
            let task = make();
            async move {
                let task = client.start(task).await?;
                match until {
                    Some(until) => tasks::wait_for(&client, task, until).await,
                    None => Ok(task),
                }
            }
        })
        .buffer_unordered(concurrency)
        .enumerate()
        .map(|(n, result)| {
            if (n as u64 + 1).is_multiple_of(100_000) {
                eprintln!(
                    "  {} of {count} started in {:.0} s",
                    n + 1,
                    began.elapsed().as_secs_f64()
                );
            }
            result
        })
        .collect()
        .await;
    let mut failed = 0;
    let mut started = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(task) => started.push(task),
            Err(err) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("  start failed: {err}");
                }
            }
        }
    }
    (started, failed)
}

pub(super) async fn used_memory(redis: &mut MultiplexedConnection) -> BenchResult<f64> {
    let info = counters::info(redis, "memory").await?;
    info_field(&info, "used_memory")
        .ok_or_else(|| BenchError::Unexpected("INFO memory has no used_memory".into()))
}

/// `MEMORY USAGE` of a task's own keys, summed (a missing key counts 0).
async fn task_bytes(
    bench: &Bench,
    redis: &mut MultiplexedConnection,
    id: &str,
) -> BenchResult<u64> {
    let prefix = &bench.args.redis_prefix;
    let mut pipe = redis::pipe();
    for key in ["task", "history", "checkpoints"] {
        pipe.cmd("MEMORY")
            .arg("USAGE")
            .arg(format!("{prefix}{key}:{id}"))
            .arg("SAMPLES")
            .arg(0);
    }
    let sizes: Vec<Option<u64>> = pipe
        .query_async(redis)
        .await
        .map_err(|err| BenchError::Unexpected(format!("MEMORY USAGE: {err}")))?;
    Ok(sizes.into_iter().flatten().sum())
}

/// Bytes per task both ways, for `count` tasks made by `make`, followed until `until`.
pub(super) async fn memory_of(
    bench: &Bench,
    count: u64,
    redis: &mut MultiplexedConnection,
    make: impl Fn() -> StartTask,
    until: Option<fn(&Task) -> bool>,
) -> BenchResult<(f64, f64, Vec<Task>)> {
    let before = used_memory(redis).await?;
    let (started, _) = start_many(bench, count, START_CONCURRENCY, make, until).await;
    let after = used_memory(redis).await?;
    if started.is_empty() {
        return Err(BenchError::Unexpected("no task started".into()));
    }
    let mut keys = 0;
    for task in &started {
        keys += task_bytes(bench, redis, &task.id).await?;
    }
    let count = started.len() as f64;
    Ok((keys as f64 / count, (after - before) / count, started))
}

async fn finished_memory(
    bench: &Bench,
    sizes: &Sizes,
    redis: &mut MultiplexedConnection,
    report: &mut Report,
) -> BenchResult<()> {
    // A short task (no checkpoint), then one that checkpointed at each of 10 steps.
    for steps in [0, 10] {
        let finished = || tasks::sleep(steps, 0);
        let (keys, used, done) =
            memory_of(bench, sizes.sample, redis, finished, Some(is_terminal)).await?;
        let checkpoints = bench
            .cluster
            .first()
            .client()
            .check(done[0].id.clone())
            .await?
            .partial_results
            .len();
        report.note(format!(
            "capacity: Redis bytes per finished task ({} versions, {checkpoints} checkpoints): {keys:.0} in its keys, {used:.0} of used_memory growth ({} tasks; kept for --retention)",
            done[0].version,
            sizes.sample
        ));
    }
    Ok(())
}

fn is_terminal(task: &Task) -> bool {
    task.state().is_terminal()
}

async fn replica_memory(bench: &Bench, sizes: &Sizes, report: &mut Report) -> BenchResult<()> {
    let a = bench.cluster.first();
    let Some(pid) = bench.replica_a_pid() else {
        report.note("capacity: replica memory not measured: replica A's process not found");
        return Ok(());
    };
    let before = process::rss_bytes(pid)?;
    let mut workers = Vec::new();
    for _ in 0..sizes.workers {
        workers.push(BenchWorker::connect(a, IDLE_KIND, 1, Duration::from_secs(3600)).await?);
    }
    let connected = process::rss_bytes(pid)?;
    drop(workers);
    report.note(format!(
        "capacity: RSS of {} per connected worker: {:.1} kB ({} workers, a connection each)",
        a.name(),
        connected.saturating_sub(before) as f64 / 1e3 / f64::from(sizes.workers),
        sizes.workers,
    ));
    let session = format!("reins-bench-capacity-{}", std::process::id());
    let before = process::rss_bytes(pid)?;
    let idle = || tasks::sleep(1, 3_600_000).session(session.clone());
    let results: Vec<BenchResult<Task>> = futures_util::stream::iter(0..sizes.running)
        .map(|_| async {
            let task = a.client().start(idle()).await?;
            tasks::wait_for(a.client(), task, tasks::has_started).await
        })
        .buffer_unordered(START_CONCURRENCY)
        .collect()
        .await;
    let on_a = results
        .iter()
        .filter(|task| {
            task.as_ref()
                .is_ok_and(|task| Some(&task.owner) == a.spec.replica.as_ref())
        })
        .count();
    let running = process::rss_bytes(pid)?;
    a.client()
        .cancel_tasks(CancelTasksRequest {
            session_id: session.clone(),
            mode: CancelMode::Hard.into(),
            reason: "reins-bench: measured".into(),
            ..CancelTasksRequest::default()
        })
        .await?;
    report.note(format!(
        "capacity: RSS of {} per running task: {:.1} kB ({} MB before, {} MB with {} idle sleep tasks started through it, {on_a} of them run there)",
        a.name(),
        running.saturating_sub(before) as f64 / 1e3 / on_a.max(1) as f64,
        megabytes(before),
        megabytes(running),
        sizes.running,
    ));

    Ok(())
}

async fn cpu_per_task(
    bench: &Bench,
    sizes: &Sizes,
    redis: &mut MultiplexedConnection,
    report: &mut Report,
) -> BenchResult<()> {
    let idle_began = Instant::now();
    let idle_from = counters::cpu_seconds(bench, redis).await?;
    tokio::time::sleep(IDLE).await;
    let idle_to = counters::cpu_seconds(bench, redis).await?;
    let idle_secs = idle_began.elapsed().as_secs_f64();
    let idle = (
        (idle_to.0 - idle_from.0) / idle_secs,
        (idle_to.1 - idle_from.1) / idle_secs,
    );

    let from = counters::cpu_seconds(bench, redis).await?;
    let began = Instant::now();
    let cluster = &bench.cluster;
    let done: Vec<BenchResult<Task>> = futures_util::stream::iter(0..sizes.short)
        .map(|n| async move {
            let client = cluster.nth(n).client();
            let task = client.start(tasks::instant()).await?;
            tasks::wait_for(client, task, is_terminal).await
        })
        .buffer_unordered(usize::from(bench.args.in_flight))
        .collect()
        .await;
    let over = began.elapsed().as_secs_f64();
    let to = counters::cpu_seconds(bench, redis).await?;
    let completed = done.iter().filter(|task| task.is_ok()).count().max(1) as f64;
    let per_task = |spent: f64, idle: f64| ((spent - idle * over) / completed).max(1e-9);
    let redis_cpu = per_task(to.0 - from.0, idle.0);
    let replica_cpu = per_task(to.1 - from.1, idle.1);
    report.note(format!(
        "capacity: CPU per short task ({completed:.0} at {:.0}/s, {} in flight): Redis {:.0} us (~{:.0} tasks/s per Redis core), replicas {:.0} us together (~{:.0} tasks/s per replica core); idle use taken off: Redis {:.1} %, replicas {:.1} % of a core",
        completed / over,
        bench.args.in_flight,
        redis_cpu * 1e6,
        1.0 / redis_cpu,
        replica_cpu * 1e6,
        1.0 / replica_cpu,
        idle.0 * 100.0,
        idle.1 * 100.0,
    ));
    Ok(())
}
