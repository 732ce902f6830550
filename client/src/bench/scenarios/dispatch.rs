//! `dispatch`: from the StartTask call to the task RUNNING, measured two ways: as the
//! client sees it (until the StartTask response, or else a watch event, shows the task
//! started) and as the server recorded it (`started_at − created_at`). One call at a time,
//! through replica A.
//!
//! With `--full-server`, the same across replicas: that replica runs with
//! `--max-concurrency 1` and is kept busy by one long task for the whole run (see
//! [`Cluster::occupy_full`]), so what is started through it waits PENDING until another
//! replica, woken by the queue channel, takes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reins_client::Client;

use crate::bench::cluster::{Cluster, Server};
use crate::bench::load::{Samples, closed_loop};
use crate::bench::report::{Report, Target};
use crate::bench::{Bench, BenchError, BenchResult, tasks};

const TARGET_P50: Duration = Duration::from_millis(1);

pub struct Dispatched {
    /// Call → started, seen by the client.
    pub seen: Duration,
    /// `started_at − created_at`.
    pub recorded: Duration,
    owner: String,
}

/// One short task started through `client` and seen started.
pub async fn dispatch_once(client: Client) -> BenchResult<Dispatched> {
    let began = Instant::now();
    let task = client.start(tasks::instant()).await?;
    let task = tasks::wait_for(&client, task, tasks::has_started).await?;
    let seen = began.elapsed();
    let created = tasks::unix_nanos(task.created_at.as_ref());
    let started = tasks::unix_nanos(task.started_at.as_ref());
    let (Some(created), Some(started)) = (created, started) else {
        return Err(BenchError::Unexpected(format!(
            "started task {} lacks created_at or started_at",
            task.id
        )));
    };
    Ok(Dispatched {
        seen,
        recorded: tasks::span(created, started),
        owner: task.owner,
    })
}

/// Dispatches one task at a time through the replica `through` picks.
async fn measure(bench: &Bench, through: fn(&Cluster) -> &Server) -> Samples<Dispatched> {
    let cluster = Arc::clone(&bench.cluster);
    closed_loop(1, bench.load(), move |_| {
        dispatch_once(through(&cluster).client().clone())
    })
    .await
}

fn add_rows(report: &mut Report, scenario: &str, measured: &Samples<Dispatched>) {
    let seen = measured.row(scenario, "client: call -> RUNNING seen", |d| d.seen);
    let recorded = measured.row(scenario, "server: started_at - created_at", |d| d.recorded);
    for row in [seen, recorded] {
        report.row(row.target(Target::P50(TARGET_P50)));
    }
}

pub async fn run(bench: &Bench) -> BenchResult<Report> {
    let mut report = Report::default();
    add_rows(
        &mut report,
        "dispatch",
        &measure(bench, Cluster::first).await,
    );
    if let Some(full) = &bench.cluster.full {
        let measured = measure(bench, |cluster| {
            cluster.full.as_ref().expect("checked before measuring")
        })
        .await;
        add_rows(&mut report, "dispatch-x", &measured);
        let elsewhere = measured
            .samples
            .iter()
            .filter(|d| full.spec.replica.as_ref() != Some(&d.owner))
            .count();
        report.note(format!(
            "dispatch-x: started through full replica {}, run by another replica: {elsewhere}/{}",
            full.name(),
            measured.samples.len()
        ));
    }
    Ok(report)
}
