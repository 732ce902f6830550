//! `reins-bench` internals: the command line ([`cli`]), the connections to the replicas
//! ([`cluster`]), the closed-loop load driver ([`load`]) and the open-loop churn
//! ([`churn`]), the bench's own worker ([`worker`]), the scenarios ([`scenarios`]) and
//! the results table ([`report`]).

mod churn;
mod cli;
mod cluster;
mod counters;
mod heartbeat;
mod load;
mod process;
mod report;
mod scenarios;
mod tasks;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use clap::ValueEnum;
use reins_client::describe_status;
use tonic::Status;

pub use self::cli::Args;
use self::cli::Scenario;
use self::cluster::{Cluster, Server};
use self::load::Load;
use self::report::Report;

/// Why a measurement (or the whole run) failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{}", describe_status(.0))]
    Rpc(#[from] Status),
    #[error("{0}")]
    Client(#[from] reins_client::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The cluster did something the scenario did not expect (a wrong state, a timeout).
    #[error("{0}")]
    Unexpected(String),
}

pub type BenchResult<T> = Result<T, BenchError>;

/// What every scenario gets: the options, the connected replicas and a scratch directory.
pub struct Bench {
    pub args: Args,
    pub cluster: Arc<Cluster>,
    pub scratch: Scratch,
}

impl Bench {
    /// The process of replica A (`--server-pid`, or whatever listens on its port here).
    pub fn replica_a_pid(&self) -> Option<u32> {
        self.args
            .server_pid
            .or_else(|| Bench::pid_of(self.cluster.first()))
    }

    /// The process listening on `server`'s port on this machine, if it is here.
    pub fn pid_of(server: &Server) -> Option<u32> {
        let url = &server.spec.url;
        let port = url.trim_end_matches('/').rsplit_once(':')?.1.parse().ok()?;
        process::listening_on(port)
    }

    /// How long (or how many operations) the timed scenarios measure.
    pub fn load(&self) -> Load {
        Load {
            duration: self.args.duration,
            count: self.args.count,
            warmup: self.args.warmup,
        }
    }
}

/// A directory for the heartbeat files of the exec tasks; removed when dropped. The
/// replicas must see the same file system (they run on this machine).
pub struct Scratch(PathBuf);

impl Scratch {
    fn create() -> BenchResult<Scratch> {
        let path = std::env::temp_dir().join(format!("reins-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Scratch(path))
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The table of every scenario that ran, and how many failed outright.
pub struct Outcome {
    pub report: Report,
    pub failed_scenarios: usize,
}

/// Connects to the replicas and runs the chosen scenarios in order. A scenario that fails
/// is reported as a note and the others still run.
pub async fn run(args: Args) -> BenchResult<Outcome> {
    let cluster = Arc::new(Cluster::connect(&args.servers, args.full_server.as_ref()).await?);
    let scenarios = if args.scenarios.is_empty() {
        // `cost` reads Redis itself: only with `--redis`.
        Scenario::value_variants()
            .iter()
            .copied()
            .filter(|scenario| scenario.in_full_run())
            .filter(|scenario| *scenario != Scenario::Cost || args.redis.is_some())
            .collect()
    } else {
        args.scenarios.clone()
    };
    let bench = Bench {
        args,
        cluster,
        scratch: Scratch::create()?,
    };
    let mut outcome = Outcome {
        report: Report::default(),
        failed_scenarios: 0,
    };
    let filler = bench.cluster.occupy_full().await?;
    for scenario in scenarios {
        let name = scenario.name();
        eprintln!("== {name}");
        match scenarios::run(scenario, &bench).await {
            Ok(section) => {
                eprint!("{section}");
                outcome.report.extend(section);
            }
            Err(err) => {
                eprintln!("{name} failed: {err}");
                outcome.report.note(format!("{name}: FAILED: {err}"));
                outcome.failed_scenarios += 1;
            }
        }
    }
    if let Some(filler) = filler {
        filler.release(&bench.cluster).await?;
    }
    // Finished tasks stay in the store for the retention period: with the embedded store
    // they are in the replica's memory.
    if let Some(rss) = bench
        .replica_a_pid()
        .and_then(|pid| process::rss_bytes(pid).ok())
    {
        let name = bench.cluster.first().name();
        outcome.report.note(format!(
            "RSS of {name} after all scenarios: {} MB",
            report::megabytes(rss)
        ));
    }
    Ok(outcome)
}
