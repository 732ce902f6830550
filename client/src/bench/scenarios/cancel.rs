//! `hard-cancel` and `soft-cancel`, measured to the moment the task's code stopped.
//!
//! Each round starts an `exec` task through replica A that runs the [`heartbeat`]
//! program, waits until it beats, notes the time just before calling HardCancel or
//! SoftCancel through another replica than the task's owner, waits for the task to be
//! CANCELLED and its process to be gone, and takes stop latency = last beat − cancel call.
//! The beat period (about 1 ms) bounds the resolution: the code stopped between its last
//! beat and the next one due, so the table also gives that upper bound (last beat plus the
//! last interval − cancel call). The cancel RPC's own latency is reported too.
//! `cancel-under-load` measures the same rounds with the cluster busy ([`measure`] with
//! its tasks started in batches).
//!
//! [`heartbeat`]: crate::bench::heartbeat

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reins_client::Client;
use reins_client::proto::{Task, TaskState};

use crate::bench::cluster::Placement;
use crate::bench::heartbeat::{Beat, Heartbeat};
use crate::bench::report::{Latencies, Report, Row, Target};
use crate::bench::{Bench, BenchError, BenchResult, tasks};

pub const TARGET_P99: Duration = Duration::from_millis(2);
/// A soft cancel's grace period: long enough that escalation is never what stops the code.
const SOFT_GRACE: Duration = Duration::from_secs(10);
const REASON: &str = "reins-bench";
/// Failed rounds printed on stderr.
const ERRORS_SHOWN: u64 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Hard,
    Soft,
}

impl Mode {
    fn scenario(self) -> &'static str {
        match self {
            Mode::Hard => "hard-cancel",
            Mode::Soft => "soft-cancel",
        }
    }

    pub fn rpc(self) -> &'static str {
        match self {
            Mode::Hard => "HardCancel RPC",
            Mode::Soft => "SoftCancel RPC",
        }
    }

    pub async fn call(self, client: &Client, id: String) -> BenchResult<Option<Task>> {
        let response = match self {
            Mode::Hard => client.hard_cancel(id, REASON).await?,
            Mode::Soft => client.soft_cancel(id, REASON, Some(SOFT_GRACE)).await?,
        };
        Ok(response.task)
    }
}

struct Round {
    /// Last beat − cancel call.
    stop: Duration,
    /// Next beat due − cancel call.
    stop_bound: Duration,
    rpc: Duration,
    placement: Placement,
}

pub async fn run(bench: &Bench, mode: Mode) -> BenchResult<Report> {
    measure(bench, mode, mode.scenario(), bench.args.rounds, 1).await
}

/// `rounds` cancels in `mode`, reported as `scenario`. The heartbeat tasks are started
/// `batch` at a time (their programs start in parallel, which is most of a round's time
/// on a busy machine) and then cancelled one after the other, each measured alone.
pub async fn measure(
    bench: &Bench,
    mode: Mode,
    scenario: &str,
    rounds: u16,
    batch: u16,
) -> BenchResult<Report> {
    let mut stop = Latencies::default();
    let mut stop_bound = Latencies::default();
    let mut rpc = Latencies::default();
    let mut errors = 0;
    let mut across = 0;
    let mut unknown = 0;
    let mut n = 0;
    while n < rounds {
        let size = batch.max(1).min(rounds - n);
        let beating: Vec<_> = futures_util::stream::iter(n..n + size)
            .map(|n| prepare(bench, scenario, n))
            .buffer_unordered(usize::from(size))
            .collect()
            .await;
        n += size;
        for beating in beating {
            let measured = match beating {
                Ok(beating) => cancel(bench, mode, beating).await,
                Err(err) => Err(err),
            };
            match measured {
                Ok(round) => {
                    stop.record(round.stop);
                    stop_bound.record(round.stop_bound);
                    rpc.record(round.rpc);
                    across += u32::from(round.placement == Placement::OtherReplica);
                    unknown += u32::from(round.placement == Placement::Unknown);
                }
                Err(err) => {
                    errors += 1;
                    if errors <= ERRORS_SHOWN {
                        eprintln!("  error: {err}");
                    }
                }
            }
        }
    }
    let mut report = Report::default();
    let measured = stop.len();
    report.row(
        Row::new(scenario, "stop: last beat - cancel call", stop)
            .errors(errors)
            .target(Target::P99(TARGET_P99)),
    );
    report.row(
        Row::new(scenario, "stop, bound: next beat due - call", stop_bound)
            .errors(errors)
            .target(Target::P99(TARGET_P99)),
    );
    report.row(Row::new(scenario, mode.rpc(), rpc).errors(errors));
    report.note(if unknown > 0 {
        format!("{scenario}: cancelled through --server 2; without replica ids, cannot tell whether that was the owner")
    } else {
        format!("{scenario}: cancelled through another replica than the owner in {across}/{measured} rounds")
    });
    Ok(report)
}

/// A heartbeat task that is running and beating, about to be cancelled.
struct Beating {
    heartbeat: Heartbeat,
    origin: Client,
    task: Task,
    beat: Beat,
}

/// Starts heartbeat task `n` through replica A and waits until it beats. Whatever goes
/// wrong, the task does not outlive the call.
async fn prepare(bench: &Bench, scenario: &str, n: u16) -> BenchResult<Beating> {
    let heartbeat = Heartbeat::new(bench.scratch.file(&format!("{scenario}-{n}")));
    let origin = bench.cluster.first().client().clone();
    let task = origin
        .start(tasks::bench_task("exec", heartbeat.exec_params()))
        .await?;
    let id = task.id.clone();
    let started = async {
        let task = tasks::wait_for(&origin, task, tasks::has_started).await?;
        let beat = heartbeat.wait_beating().await?;
        Ok::<_, BenchError>((task, beat))
    };
    match started.await {
        Ok((task, beat)) => Ok(Beating {
            heartbeat,
            origin,
            task,
            beat,
        }),
        Err(err) => {
            let _ = origin.hard_cancel(id, "reins-bench: round failed").await;
            Err(err)
        }
    }
}

/// Cancels a beating task and sees it stopped; if that fails, hard-cancels it.
async fn cancel(bench: &Bench, mode: Mode, beating: Beating) -> BenchResult<Round> {
    let id = beating.task.id.clone();
    let measured = cancel_running(bench, mode, &beating).await;
    if measured.is_err() {
        let _ = beating
            .origin
            .hard_cancel(id, "reins-bench: round failed")
            .await;
    }
    measured
}

async fn cancel_running(bench: &Bench, mode: Mode, beating: &Beating) -> BenchResult<Round> {
    let Beating {
        heartbeat,
        task,
        beat,
        ..
    } = beating;
    let (canceller, placement) = bench.cluster.other_than(&task.owner);
    let client = canceller.client();
    let called_at = tasks::now_unix_nanos();
    let began = Instant::now();
    let after_call = mode.call(client, task.id.clone()).await?;
    let rpc = began.elapsed();
    let after_call = after_call.ok_or_else(|| {
        BenchError::Unexpected(format!("the cancel of task {} returned no task", task.id))
    })?;
    let ended = tasks::wait_for(client, after_call, |task| task.state().is_terminal()).await?;
    if ended.state() != TaskState::Cancelled {
        return Err(BenchError::Unexpected(format!(
            "task {} ended {:?}, not CANCELLED",
            ended.id,
            ended.state()
        )));
    }
    let last = heartbeat.wait_stopped(beat.pid).await?;
    Ok(Round {
        stop: tasks::span(called_at, last.at),
        stop_bound: tasks::span(called_at, last.next_due()),
        rpc,
        placement,
    })
}
