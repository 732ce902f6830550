//! `bulk-cancel`: "the user pressed Stop" on a big session. Starts `--bulk-tasks` idle
//! `sleep` tasks (one step of an hour: no writes while they run) in one session, through every replica in turn (those beyond the replicas'
//! capacity wait PENDING), plus a few in another session; then one CancelTasks through
//! replica A, and measures the call and the time until no task of the session is active
//! (polled with a CancelTasks dry run, which counts the session's active tasks). Checks
//! that every task of the session stopped and none of the other session was touched.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reins_client::proto::CancelTasksRequest;

use crate::bench::report::{Latencies, Report, Row};
use crate::bench::{Bench, BenchError, BenchResult, tasks};

/// Starts in flight at once while the tasks are created.
const START_CONCURRENCY: usize = 64;
/// How long the tasks may take to stop before the round fails.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// Tasks of the other session, which must be left alone.
const BYSTANDERS: usize = 10;

fn session(id: &str, dry_run: bool) -> CancelTasksRequest {
    CancelTasksRequest {
        session_id: id.to_owned(),
        reason: "reins-bench bulk-cancel".into(),
        dry_run,
        ..CancelTasksRequest::default()
    }
}

pub async fn run(bench: &Bench) -> BenchResult<Report> {
    let run = std::process::id();
    let stopped_session = format!("reins-bench-stop-{run}");
    let bystanders = format!("reins-bench-keep-{run}");
    let total = bench.args.bulk_tasks as usize;
    let cluster = &bench.cluster;
    let created = Instant::now();
    let starts = futures_util::stream::iter(0..total + BYSTANDERS)
        .map(|n| {
            let session = if n < total {
                &stopped_session
            } else {
                &bystanders
            };
            // One step of an hour: a running task writes nothing until it is cancelled.
            let task = tasks::sleep(1, 3_600_000).session(session.clone());
            async move { cluster.nth(n as u64).client().start(task).await }
        })
        .buffer_unordered(START_CONCURRENCY);
    let started: Vec<_> = starts.collect().await;
    // A start that failed (the replicas are busy creating) is counted, not fatal: the
    // measurement is of the tasks that exist.
    let mut failed = 0;
    for err in started.iter().filter_map(|started| started.as_ref().err()) {
        failed += 1;
        if failed <= 3 {
            eprintln!("  start failed: {}", reins_client::describe_status(err));
        }
    }
    let in_session = started
        .iter()
        .filter(|task| {
            task.as_ref()
                .is_ok_and(|task| task.session_id == stopped_session)
        })
        .count();
    let bystanders_started = started.len() - failed as usize - in_session;
    let creating = created.elapsed();
    let a = cluster.first().client();
    // Active now: an overloaded replica whose lease lapsed has had its tasks settled.
    let active = a
        .cancel_tasks(session(&stopped_session, true))
        .await?
        .matched;
    let bystanders_active = a.cancel_tasks(session(&bystanders, true)).await?.matched;

    let called = Instant::now();
    let done = a.cancel_tasks(session(&stopped_session, false)).await?;
    let rpc = called.elapsed();
    if done.matched < active {
        return Err(BenchError::Unexpected(format!(
            "CancelTasks matched {} tasks, fewer than the {active} active just before",
            done.matched
        )));
    }
    loop {
        let left = a
            .cancel_tasks(session(&stopped_session, true))
            .await?
            .matched;
        if left == 0 {
            break;
        }
        if called.elapsed() > STOP_TIMEOUT {
            return Err(BenchError::Unexpected(format!(
                "{left} tasks still active {STOP_TIMEOUT:?} after the call"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_stopped = called.elapsed();
    let untouched = a.cancel_tasks(session(&bystanders, true)).await?.matched;
    a.cancel_tasks(session(&bystanders, false)).await?;
    if untouched != bystanders_active {
        return Err(BenchError::Unexpected(format!(
            "{} tasks of another session were stopped",
            bystanders_active.saturating_sub(untouched)
        )));
    }

    let single = |latency| {
        let mut latencies = Latencies::default();
        latencies.record(latency);
        latencies
    };
    let mut report = Report::default();
    report.row(
        Row::new("bulk-cancel", "CancelTasks RPC", single(rpc))
            .errors(failed)
            .rate(f64::from(done.matched) / rpc.as_secs_f64()),
    );
    report.row(
        Row::new("bulk-cancel", "call -> all stopped", single(all_stopped))
            .errors(failed)
            .rate(f64::from(done.matched) / all_stopped.as_secs_f64()),
    );
    report.note(format!(
        "bulk-cancel: {} of {in_session} started tasks still active, over {} replicas ({} cancelled at once, {} asked to stop; {failed} starts failed), created in {:.1} s; the {bystanders_active} active of the {bystanders_started} tasks of another session untouched",
        done.matched,
        cluster.len(),
        done.cancelled,
        done.requested,
        creating.as_secs_f64()
    ));
    Ok(report)
}
