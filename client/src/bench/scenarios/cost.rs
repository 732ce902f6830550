//! `cost`: what one short task costs the store, counted by Redis itself. `--count` (1,000
//! by default) `sleep` tasks of 0 steps are started, `--in-flight` at once spread over the
//! replicas, with no watcher; once Redis is quiet again the run is over. Commands are the
//! growth of every `INFO commandstats` call count (script-internal calls included, `INFO`
//! itself left out); script calls are those of `EVALSHA`/`EVAL`; round trips are the
//! growth of the replicas' `reins_store_requests_total` (one store request is one round
//! trip, pipelines and scripts included). The idle traffic of the replicas (leases,
//! periodic looks) is measured for a while before and taken off at its rate.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::bench::counters::{self, Counts};
use crate::bench::report::{Report, verdict};
use crate::bench::{Bench, BenchError, BenchResult, tasks};

/// Tasks counted when `--count` is not given.
const DEFAULT_TASKS: u64 = 1_000;
/// How long the idle traffic is measured before the run.
const IDLE: Duration = Duration::from_secs(2);
/// Redis is quiet when a poll this long after the last one saw no new script call.
const QUIET: Duration = Duration::from_millis(300);
/// Targets of issue 14 per short task: Redis commands and round trips.
const TARGET_COMMANDS: f64 = 15.0;
const TARGET_ROUND_TRIPS: f64 = 2.0;

/// What Redis and the replicas have counted so far.
struct Snapshot {
    at: Instant,
    commands: Counts,
    round_trips: f64,
}

impl Snapshot {
    async fn take(
        bench: &Bench,
        redis: &mut redis::aio::MultiplexedConnection,
    ) -> BenchResult<Snapshot> {
        let info = counters::info(redis, "commandstats").await?;
        let mut round_trips = 0.0;
        for url in &bench.args.metrics {
            round_trips += counters::sum(url, "reins_store_requests_total", &[]).await?;
        }
        Ok(Snapshot {
            at: Instant::now(),
            commands: counters::commandstats(&info),
            round_trips,
        })
    }

    fn scripts(&self) -> f64 {
        self.commands.get("evalsha") + self.commands.get("eval")
    }
}

/// Growth from `from` to `to`, less the idle growth at `idle` per second.
fn growth(from: f64, to: f64, idle: f64, over: Duration) -> f64 {
    ((to - from) - idle * over.as_secs_f64()).max(0.0)
}

pub async fn run(bench: &Bench) -> BenchResult<Report> {
    let mut redis = counters::redis(bench, "cost").await?;

    let idle_from = Snapshot::take(bench, &mut redis).await?;
    tokio::time::sleep(IDLE).await;
    let idle_to = Snapshot::take(bench, &mut redis).await?;
    let idle_secs = (idle_to.at - idle_from.at).as_secs_f64();
    let idle_commands = idle_to.commands.total_since(&idle_from.commands) / idle_secs;
    let idle_round_trips = (idle_to.round_trips - idle_from.round_trips) / idle_secs;

    let count = bench.args.count.unwrap_or(DEFAULT_TASKS);
    let began = Snapshot::take(bench, &mut redis).await?;
    let started = Instant::now();
    let mut running = JoinSet::new();
    let mut failed = 0u64;
    for n in 0..count {
        if running.len() >= usize::from(bench.args.in_flight)
            && let Some(done) = running.join_next().await
        {
            failed += u64::from(!matches!(done, Ok(Ok(_))));
        }
        let client = bench.cluster.nth(n).client().clone();
        running.spawn(async move { client.start(tasks::instant()).await });
    }
    while let Some(done) = running.join_next().await {
        failed += u64::from(!matches!(done, Ok(Ok(_))));
    }
    // The tasks finish on their own: wait until no script call comes any more.
    let mut last = Snapshot::take(bench, &mut redis).await?;
    loop {
        tokio::time::sleep(QUIET).await;
        let now = Snapshot::take(bench, &mut redis).await?;
        let quiet = now.scripts() == last.scripts();
        last = now;
        if quiet {
            break;
        }
        if started.elapsed() > tasks::STATE_TIMEOUT + Duration::from_secs(count / 100) {
            return Err(BenchError::Unexpected("Redis never went quiet".into()));
        }
    }
    let over = last.at - began.at;
    let tasks = count.saturating_sub(failed).max(1) as f64;
    let commands = growth(
        0.0,
        last.commands.total_since(&began.commands),
        idle_commands,
        over,
    ) / tasks;
    let scripts = (last.scripts() - began.scripts()) / tasks;
    let round_trips = growth(began.round_trips, last.round_trips, idle_round_trips, over) / tasks;

    let mut report = Report::default();
    report.note(format!(
        "cost: {count} short tasks ({failed} failed), no watcher: {commands:.1} Redis commands \
         per task ({scripts:.2} script calls; target <= {TARGET_COMMANDS}: {}), {round_trips:.2} \
         round trips per task (target <= {TARGET_ROUND_TRIPS}: {}); idle traffic taken off: \
         {idle_commands:.1} commands/s, {idle_round_trips:.1} round trips/s",
        verdict(commands <= TARGET_COMMANDS),
        verdict(round_trips <= TARGET_ROUND_TRIPS),
    ));
    let mut busiest: Vec<(String, f64)> = last
        .commands
        .since(&began.commands)
        .into_iter()
        .map(|(name, calls)| (name, calls / tasks))
        .filter(|(_, per_task)| *per_task >= 0.05)
        .collect();
    busiest.sort_by(|a, b| b.1.total_cmp(&a.1));
    let per_command: Vec<String> = busiest
        .iter()
        .map(|(name, per_task)| format!("{name} {per_task:.2}"))
        .collect();
    report.note(format!(
        "cost: commands per task: {}",
        per_command.join(", ")
    ));
    if bench.args.metrics.is_empty() {
        report.note("cost: no --metrics given, so no round trips counted");
    }
    Ok(report)
}
