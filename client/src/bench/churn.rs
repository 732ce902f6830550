//! Open-loop churn: short tasks (`sleep`, 0 steps) started at a fixed rate through every
//! replica in turn, each finishing on its own, while a scenario measures something else.
//! Starts are issued on schedule whatever the replicas' latency, up to [`IN_FLIGHT`]
//! calls at once; past that the schedule slips (by at most [`IN_FLIGHT`] starts: those
//! further behind are dropped and counted), and the rate achieved (reported by
//! [`Churn::stop`]) is below the one asked for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::cluster::Cluster;
use super::tasks;

/// StartTask calls of the churn in flight at once: as many as `lifecycle` keeps, so a churn
/// beyond what the cluster sustains presses as hard as that and no harder.
const IN_FLIGHT: usize = 128;
/// How often the scheduler wakes to issue the starts that are due.
const TICK: Duration = Duration::from_millis(1);

#[derive(Default)]
struct Counts {
    started: AtomicU64,
    failed: AtomicU64,
    /// Starts dropped from the schedule when it slipped by more than [`IN_FLIGHT`].
    skipped: AtomicU64,
}

/// The churn running in the background; [`Churn::stop`] ends it.
pub struct Churn {
    stopping: Arc<AtomicBool>,
    counts: Arc<Counts>,
    began: Instant,
    scheduler: JoinHandle<()>,
}

/// What the churn did.
pub struct ChurnDone {
    pub started: u64,
    pub failed: u64,
    pub skipped: u64,
    pub elapsed: Duration,
}

impl ChurnDone {
    /// Tasks started per second.
    pub fn rate(&self) -> f64 {
        self.started as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

impl Churn {
    /// Starts `per_second` short tasks a second until stopped.
    pub fn start(cluster: Arc<Cluster>, per_second: f64) -> Churn {
        let stopping = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let began = Instant::now();
        let scheduler = tokio::spawn(schedule(
            cluster,
            per_second,
            Arc::clone(&stopping),
            Arc::clone(&counts),
        ));
        Churn {
            stopping,
            counts,
            began,
            scheduler,
        }
    }

    /// Stops issuing starts and waits for those in flight.
    pub async fn stop(self) -> ChurnDone {
        self.stopping.store(true, Ordering::Relaxed);
        let _ = self.scheduler.await;
        ChurnDone {
            started: self.counts.started.load(Ordering::Relaxed),
            failed: self.counts.failed.load(Ordering::Relaxed),
            skipped: self.counts.skipped.load(Ordering::Relaxed),
            elapsed: self.began.elapsed(),
        }
    }
}

async fn schedule(
    cluster: Arc<Cluster>,
    per_second: f64,
    stopping: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    const ERRORS_SHOWN: u64 = 3;
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let began = Instant::now();
    let mut issued = 0u64;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stopping.load(Ordering::Relaxed) {
        ticker.tick().await;
        let due = (began.elapsed().as_secs_f64() * per_second) as u64;
        // Far behind: catching up all at once would be a burst no client makes.
        let behind = due.saturating_sub(issued).saturating_sub(IN_FLIGHT as u64);
        counts.skipped.fetch_add(behind, Ordering::Relaxed);
        issued += behind;
        while issued < due && !stopping.load(Ordering::Relaxed) {
            let permit = Arc::clone(&gate)
                .acquire_owned()
                .await
                .expect("the gate is never closed");
            let client = cluster.nth(issued).client().clone();
            let counts = Arc::clone(&counts);
            issued += 1;
            tokio::spawn(async move {
                match client.start(tasks::instant()).await {
                    Ok(_) => counts.started.fetch_add(1, Ordering::Relaxed),
                    Err(status) => {
                        let failed = counts.failed.fetch_add(1, Ordering::Relaxed);
                        if failed < ERRORS_SHOWN {
                            eprintln!(
                                "  churn start failed: {}",
                                reins_client::describe_status(&status)
                            );
                        }
                        failed
                    }
                };
                drop(permit);
            });
        }
    }
    // Every permit back: no start of the churn is still in flight.
    let _ = gate.acquire_many(IN_FLIGHT as u32).await;
}
