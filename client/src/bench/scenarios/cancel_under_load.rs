//! `cancel-under-load`: cross-replica cancels while the cluster is busy. First
//! `--running` tasks are started and kept running, in one session: half of them tasks of
//! a [`BenchWorker`] connected to each replica (each reporting progress every
//! `--worker-progress`), half `exec` tasks running `sleep` (a process and its subreaper
//! each, writing nothing). Then `--churn` short tasks a second start and complete
//! ([`Churn`]), and meanwhile `--rounds` cancels of each kind are measured, one at a
//! time, each through the replica that does not own the task:
//!
//! - hard and soft cancels of heartbeat `exec` tasks, as `hard-cancel`/`soft-cancel` do
//!   (stop = last beat − cancel call; their programs start [`HEARTBEAT_BATCH`] at a time);
//! - hard and soft cancels of running worker tasks: stop = the moment the `abort` or
//!   `cancel` reached the worker − cancel call (the worker stops there), then a new worker
//!   task takes the place of the cancelled one.
//!
//! The churn achieved is reported as started (by the bench) and completed (the growth of
//! the replicas' `reins_tasks_finished_total{kind="sleep",state="completed"}` while the
//! cancels were measured, with `--metrics`), with the queue depth at the end.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reins_client::proto::{CancelMode, CancelTasksRequest};
use serde_json::json;

use super::cancel::{self, Mode, TARGET_P99};
use crate::bench::churn::Churn;
use crate::bench::cluster::Placement;
use crate::bench::counters;
use crate::bench::report::{Latencies, Report, Row, Target};
use crate::bench::worker::BenchWorker;
use crate::bench::{Bench, BenchError, BenchResult, tasks};

/// The kind the bench's workers serve.
const WORKER_KIND: &str = "reins-bench-worker";
/// Heartbeat programs started at once between measured cancels: starting them together
/// saves most of the wait for the interpreters, but the ones not cancelled yet beat
/// meanwhile (each about 2 % of a core, profiled), which loads the machine under measurement.
const HEARTBEAT_BATCH: u16 = 4;
/// Background tasks being started at once.
const START_CONCURRENCY: usize = 64;
/// The churn runs this long before anything is measured.
const CHURN_WARMUP: Duration = Duration::from_secs(2);
/// Failed rounds printed on stderr.
const ERRORS_SHOWN: u64 = 5;

/// The session of the tasks kept running, cancelled together at the end.
fn session() -> String {
    format!("reins-bench-load-{}", std::process::id())
}

pub async fn run(bench: &Bench) -> BenchResult<Report> {
    let args = &bench.args;
    let cluster = &bench.cluster;
    let session = session();
    let worker_tasks = args.running / 2;
    let exec_tasks = args.running - worker_tasks;

    let setup = Instant::now();
    let mut workers = Vec::new();
    for server in &cluster.servers {
        // Every worker may hold them all: where each task runs is the replicas' choice.
        let slots = worker_tasks.max(1) + u32::from(args.rounds);
        workers.push(BenchWorker::connect(server, WORKER_KIND, slots, args.worker_progress).await?);
    }
    let starts = futures_util::stream::iter(0..args.running)
        .map(|n| {
            let task = if n % 2 == 0 && n / 2 < worker_tasks {
                tasks::bench_task(WORKER_KIND, json!({}))
            } else {
                tasks::bench_task("exec", json!({ "argv": ["sleep", "3600"] }))
            };
            // Each kind through the replicas in turn (the two kinds alternate in `n`).
            let client = cluster.nth(u64::from(n / 2)).client().clone();
            let task = task.session(session.clone());
            async move {
                let task = client.start(task).await?;
                tasks::wait_for(&client, task, tasks::has_started).await
            }
        })
        .buffer_unordered(START_CONCURRENCY);
    let started: Vec<_> = starts.collect().await;
    let failed_to_start = started.iter().filter(|started| started.is_err()).count();
    if let Some(Err(err)) = started.iter().find(|started| started.is_err()) {
        eprintln!("  {failed_to_start} background tasks did not start, e.g.: {err}");
    }
    let setup_time = setup.elapsed();
    let measured = measure(bench, &workers).await;
    let still_running: usize = workers.iter().map(BenchWorker::running).sum();
    let stopped = cluster
        .first()
        .client()
        .cancel_tasks(CancelTasksRequest {
            session_id: session,
            mode: CancelMode::Hard.into(),
            reason: "reins-bench: done".into(),
            ..CancelTasksRequest::default()
        })
        .await;
    let (mut report, notes) = measured?;
    stopped?;
    report.note(format!(
        "cancel-load: {} tasks running ({worker_tasks} worker tasks on {} workers, progress every {}; {exec_tasks} exec `sleep`), {failed_to_start} of them failed to start; set up in {:.1} s; {still_running} worker tasks running at the end",
        args.running,
        workers.len(),
        humantime::format_duration(args.worker_progress),
        setup_time.as_secs_f64(),
    ));
    notes.into_iter().for_each(|note| report.note(note));
    Ok(report)
}

/// The cancels, with the churn running; the rows and notes on the churn and the machine.
async fn measure(bench: &Bench, workers: &[BenchWorker]) -> BenchResult<(Report, Vec<String>)> {
    let args = &bench.args;
    let churn = (args.churn > 0.0).then(|| Churn::start(bench.cluster.clone(), args.churn));
    tokio::time::sleep(CHURN_WARMUP).await;
    let measured = cancels(bench, workers).await;
    let churned = match churn {
        Some(churn) => Some(churn.stop().await),
        None => None,
    };
    let (report, from, to) = measured?;
    let window = (to.at - from.at).as_secs_f64();
    let completed = match (&from.metrics, &to.metrics) {
        (Some(from), Some(to)) => format!(
            ", {:.0} completed/s while the cancels were measured ({window:.1} s), {} tasks queued at the end",
            (to.completed - from.completed) / window,
            to.queued
        ),
        _ => ", completions not counted (no --metrics)".to_owned(),
    };
    let mut notes = vec![match churned {
        None => "cancel-load: no churn (--churn 0)".to_owned(),
        Some(churn) => format!(
            "cancel-load: churn asked {:.0}/s: {:.0} started/s ({} starts, {} failed, {} dropped behind schedule){completed}",
            args.churn,
            churn.rate(),
            churn.started,
            churn.failed,
            churn.skipped,
        ),
    }];
    let mut machine = Vec::new();
    if let (Some(from), Some(to)) = (from.cpu, to.cpu) {
        machine.push(format!(
            "Redis used {:.0} % of a core, the replicas {:.0} % together",
            (to.0 - from.0) / window * 100.0,
            (to.1 - from.1) / window * 100.0
        ));
    }
    if let (Some(from), Some(to)) = (&from.metrics, &to.metrics) {
        let swaps = to.swaps - from.swaps;
        machine.push(format!(
            "a store compare-and-swap took {:.2} ms on average ({swaps:.0} of them); replicas lost: {:.0}, tasks settled by a reaper: {:.0}",
            (to.swap_seconds - from.swap_seconds) / swaps.max(1.0) * 1e3,
            to.lost - from.lost,
            to.settled - from.settled,
        ));
    }
    machine.push(format!("load average {}", load_average()));
    notes.push(format!(
        "cancel-load: while measured: {}",
        machine.join("; ")
    ));
    Ok((report, notes))
}

/// The rounds of every kind, and what was counted before and after them.
async fn cancels(
    bench: &Bench,
    workers: &[BenchWorker],
) -> BenchResult<(Report, Snapshot, Snapshot)> {
    let from = Snapshot::take(bench).await?;
    let mut report = Report::default();
    for (mode, scenario) in [
        (Mode::Hard, "load-hard-exec"),
        (Mode::Soft, "load-soft-exec"),
    ] {
        let rows = cancel::measure(bench, mode, scenario, bench.args.rounds, HEARTBEAT_BATCH);
        report.extend(rows.await?);
    }
    for (mode, scenario) in [
        (Mode::Hard, "load-hard-worker"),
        (Mode::Soft, "load-soft-worker"),
    ] {
        report.extend(worker_rounds(bench, workers, mode, scenario).await);
    }
    let to = Snapshot::take(bench).await?;
    Ok((report, from, to))
}

/// The replicas' counters, summed over them (with `--metrics`).
struct Counted {
    /// Short tasks completed.
    completed: f64,
    /// Store compare-and-swaps (every state change) and the seconds they took.
    swaps: f64,
    swap_seconds: f64,
    lost: f64,
    settled: f64,
    /// PENDING tasks (the shared queue, as the first replica reads it).
    queued: f64,
}

impl Counted {
    async fn take(urls: &[String]) -> BenchResult<Option<Counted>> {
        let Some(first) = urls.first() else {
            return Ok(None);
        };
        let sum = async |name: &str, labels: &[&str]| {
            let mut total = 0.0;
            for url in urls {
                total += counters::sum(url, name, labels).await?;
            }
            Ok::<f64, BenchError>(total)
        };
        let swap = ["op=\"compare_and_swap\""];
        let short = ["kind=\"sleep\"", "state=\"completed\""];
        Ok(Some(Counted {
            completed: sum("reins_tasks_finished_total", &short).await?,
            swaps: sum("reins_store_request_seconds_count", &swap).await?,
            swap_seconds: sum("reins_store_request_seconds_sum", &swap).await?,
            lost: sum("reins_replicas_lost_total", &[]).await?,
            settled: sum("reins_tasks_settled_by_reaper_total", &[]).await?,
            queued: counters::sum(first, "reins_queue_depth", &[]).await?,
        }))
    }
}

/// What the replicas and Redis have counted so far.
struct Snapshot {
    at: Instant,
    metrics: Option<Counted>,
    /// CPU seconds of Redis and of the replicas (with `--redis`).
    cpu: Option<(f64, f64)>,
}

impl Snapshot {
    async fn take(bench: &Bench) -> BenchResult<Snapshot> {
        let cpu = match &bench.args.redis {
            Some(_) => {
                let mut redis = counters::redis(bench, "cancel-under-load").await?;
                Some(counters::cpu_seconds(bench, &mut redis).await?)
            }
            None => None,
        };
        Ok(Snapshot {
            at: Instant::now(),
            metrics: Counted::take(&bench.args.metrics).await?,
            cpu,
        })
    }
}

/// This machine's load average (1, 5, 15 minutes), as `/proc/loadavg` gives it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// `--rounds` cancels in `mode` of running worker tasks, through the replica that does not
/// own each; every cancelled task is replaced by a new one.
async fn worker_rounds(
    bench: &Bench,
    workers: &[BenchWorker],
    mode: Mode,
    scenario: &str,
) -> Report {
    let mut stop = Latencies::default();
    let mut rpc = Latencies::default();
    let mut errors = 0;
    let mut across = 0;
    for n in 0..bench.args.rounds {
        let worker = &workers[usize::from(n) % workers.len()];
        match worker_round(bench, worker, mode).await {
            Ok((stopped, called, placement)) => {
                stop.record(stopped);
                rpc.record(called);
                across += u32::from(placement == Placement::OtherReplica);
            }
            Err(err) => {
                errors += 1;
                if errors <= ERRORS_SHOWN {
                    eprintln!("  error: {err}");
                }
            }
        }
        // The place of the cancelled task is taken by a new one, started in the background
        // (it need not be running yet: the next round takes another task).
        let replacement = tasks::bench_task(WORKER_KIND, json!({})).session(session());
        let client = bench.cluster.nth(u64::from(n)).client().clone();
        tokio::spawn(async move {
            if let Err(err) = client.start(replacement).await {
                eprintln!("  a replacement worker task did not start: {err}");
            }
        });
    }
    let mut report = Report::default();
    let what = match mode {
        Mode::Hard => "stop: abort at worker - call",
        Mode::Soft => "stop: cancel at worker - call",
    };
    report.row(
        Row::new(scenario, what, stop)
            .errors(errors)
            .target(Target::P99(TARGET_P99)),
    );
    report.row(Row::new(scenario, mode.rpc(), rpc).errors(errors));
    report.note(format!(
        "{scenario}: cancelled through another replica than the owner in {across}/{} rounds",
        bench.args.rounds - errors as u16
    ));
    report
}

/// One worker task cancelled: (stop, RPC latency, placement).
async fn worker_round(
    bench: &Bench,
    worker: &BenchWorker,
    mode: Mode,
) -> BenchResult<(Duration, Duration, Placement)> {
    if let Some(why) = worker.closed() {
        return Err(BenchError::Unexpected(format!(
            "the worker on {} is gone: {why}",
            worker.replica
        )));
    }
    let (id, told) = worker.pick().ok_or_else(|| {
        BenchError::Unexpected(format!("the worker on {} runs no task", worker.replica))
    })?;
    let (canceller, placement) = bench.cluster.other_than(&worker.replica);
    let called_at = tasks::now_unix_nanos();
    let began = Instant::now();
    mode.call(canceller.client(), id.clone()).await?;
    let rpc = began.elapsed();
    let stopped = tokio::time::timeout(tasks::STATE_TIMEOUT, told)
        .await
        .map_err(|_| {
            BenchError::Unexpected(format!(
                "no cancel of task {id} reached the worker within {:?}",
                tasks::STATE_TIMEOUT
            ))
        })?
        .map_err(|_| BenchError::Unexpected(format!("the worker of task {id} is gone")))?;
    if stopped.aborted != (mode == Mode::Hard) {
        return Err(BenchError::Unexpected(format!(
            "task {id}: the worker got {} for a {mode:?} cancel",
            if stopped.aborted { "abort" } else { "cancel" }
        )));
    }
    Ok((tasks::span(called_at, stopped.at), rpc, placement))
}
