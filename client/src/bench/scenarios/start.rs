//! `start`: the latency of StartTask alone, for `sleep` tasks of 0 steps, from
//! `--start-concurrency` callers spread over the replicas.

use std::sync::Arc;
use std::time::Instant;

use crate::bench::load::closed_loop;
use crate::bench::report::Report;
use crate::bench::{Bench, BenchResult, tasks};

pub async fn run(bench: &Bench) -> BenchResult<Report> {
    let cluster = Arc::clone(&bench.cluster);
    let callers = bench.args.start_concurrency;
    let measured = closed_loop(callers.into(), bench.load(), move |n| {
        let client = cluster.nth(n).client().clone();
        async move {
            let began = Instant::now();
            client.start(tasks::instant()).await?;
            Ok(began.elapsed())
        }
    })
    .await;
    let mut report = Report::default();
    report.row(measured.row(
        "start",
        &format!("StartTask RPC, {callers} caller(s)"),
        |d| *d,
    ));
    Ok(report)
}
