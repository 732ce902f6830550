//! `watch-fanout`: `--watchers` WatchTask streams on replica A, spread over
//! `--connections` HTTP/2 connections and `--watch-tasks` tasks; then the tasks change and
//! each delivery's latency is its arrival time minus the event's `time` (the server's
//! timestamp of the change, on the same clock). Replica A's resident memory (VmRSS) is read
//! before the watchers connect, while they are all connected, and once the tasks are done.
//!
//! Each task is a `sleep` that asks a question after its first step, so it waits,
//! unchanging, while the watchers connect. Answering it lets the other steps run: the
//! answer, each later step and the completion are one change each, `--watch-steps` + 1 in
//! all, every one delivered to every watcher of the task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reins_client::proto::{Task, TaskState};
use reins_client::{Client, StartTask, WatchOptions};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_stream::StreamExt;

use crate::bench::report::{Latencies, Report, Row, Target, megabytes, verdict};
use crate::bench::{Bench, BenchError, BenchResult, process, tasks};

const TARGET_P99: Duration = Duration::from_millis(50);
/// Most resident memory of the replica with every watcher connected.
const TARGET_RSS: u64 = 200_000_000;
/// Watches being opened at once (the rest wait), so opening 10,000 is not one burst.
const OPENING_AT_ONCE: usize = 500;
/// How long all the watchers may take to connect.
const CONNECT_PATIENCE: Duration = Duration::from_secs(120);
/// Failed watchers printed on stderr.
const ERRORS_SHOWN: u64 = 5;

pub async fn run(bench: &Bench) -> BenchResult<Report> {
    let args = &bench.args;
    let server = bench.cluster.first();
    let pid = bench.replica_a_pid();
    let rss = || pid.and_then(|pid| process::rss_bytes(pid).ok());
    let rss_before = rss();

    let client = server.client();
    let mut started = Vec::new();
    for _ in 0..args.watch_tasks {
        started.push(
            client
                .start(waiting_task(args.watch_steps, args.watch_step))
                .await?,
        );
    }
    // Each task asks once its first step is over: wait for them all at once.
    let mut task_ids = Vec::new();
    let waiting: fn(&Task) -> bool = |task| task.state() == TaskState::WaitingForAnswer;
    for task in started {
        task_ids.push(tasks::wait_for(client, task, waiting).await?.id);
    }
    let mut connections = Vec::new();
    for _ in 0..args.connections {
        connections.push(Client::connect(server.spec.url.clone()).await?);
    }

    eprintln!(
        "  {} tasks waiting; opening {} watches over {} connections",
        task_ids.len(),
        args.watchers,
        connections.len()
    );
    let connecting = Instant::now();
    let gate = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let (ready, mut readiness) = mpsc::unbounded_channel();
    let mut watchers = JoinSet::new();
    for n in 0..args.watchers as usize {
        watchers.spawn(watch(
            connections[n % connections.len()].clone(),
            task_ids[n % task_ids.len()].clone(),
            Arc::clone(&gate),
            ready.clone(),
        ));
    }
    drop(ready);
    let mut connected = 0;
    let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
    // Ends when every watcher is ready or has failed (its sender dropped), or at the deadline.
    while let Ok(Some(())) = tokio::time::timeout_at(deadline, readiness.recv()).await {
        connected += 1;
    }
    let connect_time = connecting.elapsed();
    let rss_watching = rss();

    eprintln!("  {connected} watchers ready; answering the tasks");
    let changing = Instant::now();
    for id in &task_ids {
        client.answer(id.clone(), "go").await?;
    }
    let patience = args.watch_step * (args.watch_steps as u32 + 1) + Duration::from_secs(60);
    let (delays, errors) = collect(&mut watchers, patience).await;
    let changes_time = changing.elapsed();
    let rss_after = rss();

    let mut report = Report::default();
    let expected = u64::from(args.watchers) * (args.watch_steps + 1);
    let rate = delays.len() as f64 / changes_time.as_secs_f64();
    report.row(
        Row::new("watch-fanout", "delivery: received - event time", delays)
            .errors(errors)
            .rate(rate)
            .target(Target::P99(TARGET_P99)),
    );
    report.note(format!(
        "watch-fanout: {connected}/{} watchers of {} tasks over {} connections to {}, connected in {:.2} s; \
         a burst of {} deliveries every {}, {expected} in all",
        args.watchers,
        args.watch_tasks,
        args.connections,
        server.name(),
        connect_time.as_secs_f64(),
        args.watchers,
        humantime::format_duration(args.watch_step),
    ));
    report.note(match (pid, rss_before, rss_watching, rss_after) {
        (Some(pid), Some(before), Some(watching), Some(after)) => format!(
            "watch-fanout: RSS of {} (pid {pid}): before {} MB, with the watchers {} MB (+{:.1} kB per watcher), after {} MB; with watchers <= {} MB {}",
            server.name(),
            megabytes(before),
            megabytes(watching),
            watching.saturating_sub(before) as f64 / 1e3 / f64::from(args.watchers),
            megabytes(after),
            megabytes(TARGET_RSS),
            verdict(watching <= TARGET_RSS),
        ),
        _ => "watch-fanout: RSS not measured: replica A's process not found (pass --server-pid)"
            .to_owned(),
    });
    Ok(report)
}

/// A task that, once answered, changes `steps + 1` times, `step` apart.
fn waiting_task(steps: u64, step: Duration) -> StartTask {
    let params = json!({
        "steps": steps,
        "step_ms": step.as_millis() as u64,
        "ask": "reins-bench: the watchers are connected; go?",
    });
    tasks::bench_task("sleep", params)
}

/// One watcher: opens the watch (at most [`OPENING_AT_ONCE`] at a time), reads the current
/// state, says it is ready, then returns the delivery latency (µs) of every later event.
async fn watch(
    client: Client,
    task_id: String,
    gate: Arc<Semaphore>,
    ready: mpsc::UnboundedSender<()>,
) -> BenchResult<Vec<u64>> {
    let permit = gate
        .acquire_owned()
        .await
        .expect("the gate is never closed");
    let mut events = client.watch(task_id, WatchOptions::default()).await?;
    events
        .next()
        .await
        .ok_or_else(|| BenchError::Unexpected("a watch ended before its first event".into()))??;
    drop(permit);
    let _ = ready.send(());
    drop(ready);
    let mut delays = Vec::new();
    while let Some(event) = events.next().await {
        let received = tasks::now_unix_nanos();
        let changed = tasks::unix_nanos(event?.time.as_ref())
            .ok_or_else(|| BenchError::Unexpected("an event without time".into()))?;
        delays.push(tasks::span(changed, received).as_micros() as u64);
    }
    Ok(delays)
}

/// Waits (at most `patience`) for every watcher to end; their delays and how many failed.
async fn collect(
    watchers: &mut JoinSet<BenchResult<Vec<u64>>>,
    patience: Duration,
) -> (Latencies, u64) {
    let mut delays = Latencies::default();
    let mut errors = 0;
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let error = match tokio::time::timeout_at(deadline, watchers.join_next()).await {
            Ok(None) => break,
            Ok(Some(Ok(Ok(watched)))) => {
                watched.into_iter().for_each(|us| delays.record_micros(us));
                continue;
            }
            Ok(Some(Ok(Err(err)))) => err.to_string(),
            Ok(Some(Err(join))) => join.to_string(),
            Err(_) => {
                errors += watchers.len() as u64;
                eprintln!(
                    "  {} watchers still open after {patience:?}",
                    watchers.len()
                );
                watchers.abort_all();
                break;
            }
        };
        errors += 1;
        if errors <= ERRORS_SHOWN {
            eprintln!("  watcher error: {error}");
        }
    }
    (delays, errors)
}
