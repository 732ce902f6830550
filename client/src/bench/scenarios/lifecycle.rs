//! `lifecycle`: short tasks (`sleep`, 0 steps) from the StartTask call to COMPLETED,
//! `--in-flight` at once spread over the replicas: tasks per second and end-to-end
//! latency. The end is seen through WatchTask from the version StartTask returned, as a
//! client waiting for a result would see it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reins_client::proto::TaskState;

use crate::bench::load::closed_loop;
use crate::bench::report::{Report, Target};
use crate::bench::{Bench, BenchError, BenchResult, tasks};

/// Short tasks started to COMPLETED per second, through one Redis.
const TARGET_RATE: f64 = 5000.0;

pub async fn run(bench: &Bench) -> BenchResult<Report> {
    let cluster = Arc::clone(&bench.cluster);
    let in_flight = bench.args.in_flight;
    let measured = closed_loop(in_flight.into(), bench.load(), move |n| {
        let client = cluster.nth(n).client().clone();
        async move {
            let began = Instant::now();
            let task = client.start(tasks::instant()).await?;
            let task = tasks::wait_for(&client, task, |task| task.state().is_terminal()).await?;
            if task.state() != TaskState::Completed {
                return Err(BenchError::Unexpected(format!(
                    "task {} ended {:?}",
                    task.id,
                    task.state()
                )));
            }
            Ok::<Duration, BenchError>(began.elapsed())
        }
    })
    .await;
    let mut report = Report::default();
    let metric = format!("start -> COMPLETED, {in_flight} in flight");
    report.row(
        measured
            .row("lifecycle", &metric, |d| *d)
            .target(Target::Rate(TARGET_RATE)),
    );
    Ok(report)
}
