//! Command-line options of `reins-bench`. Defaults keep a full run to about a minute of
//! measuring on a 2-core machine.

use std::time::Duration;

use clap::{Parser, ValueEnum};

use super::cluster::ServerSpec;
use super::scenarios::backlog::Wait;

const AFTER_HELP: &str = "\
Replicas are given as URL or REPLICA_ID=URL. With the ids, the cancel scenarios always \
cancel through a replica other than the task's owner, and say so; without them they use \
the second --server and cannot tell. The first --server is replica A: it starts the exec \
tasks of the cancel scenarios and takes the watchers of watch-fanout.

The cancel scenarios run `python3` heartbeats through the `exec` kind: every replica needs \
`--allow-exec python3` and must share this machine's file system and clock.";

/// Load generator for a running Reins cluster.
#[derive(Debug, Parser)]
#[command(name = "reins-bench", version, after_help = AFTER_HELP)]
pub struct Args {
    /// A replica to drive, `URL` or `REPLICA_ID=URL`. Repeat for more replicas.
    #[arg(long = "server", value_name = "[ID=]URL", required = true)]
    pub servers: Vec<ServerSpec>,

    /// A replica started with `--max-concurrency 1`, for cross-replica dispatch: the bench
    /// keeps it busy with one long task, so tasks started through it are queued and run by
    /// another replica. Needs the replica id.
    #[arg(long, value_name = "ID=URL")]
    pub full_server: Option<ServerSpec>,

    /// A scenario to run; repeat for several, run in the order given. Default: all, in the
    /// order listed here.
    #[arg(long = "scenario", value_enum, value_name = "NAME")]
    pub scenarios: Vec<Scenario>,

    /// How long each timed scenario (start, dispatch, lifecycle) measures.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Measure this many operations in each timed scenario instead of a duration (and, in
    /// `cost`, `capacity` and `backlog`, this many tasks per sample: a quick run).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Operations begun in this first stretch of a timed scenario are not recorded.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// Concurrent callers in `start` (1: the latency of a lone call).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub start_concurrency: u16,

    /// Tasks in flight at once in `lifecycle`.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..))]
    pub in_flight: u16,

    /// Cancels measured by each of `hard-cancel` and `soft-cancel`, one after the other, and
    /// by each of the four kinds of `cancel-under-load`.
    #[arg(long, default_value_t = 150, value_parser = clap::value_parser!(u16).range(1..))]
    pub rounds: u16,

    /// Tasks kept running during `cancel-under-load`: half of them tasks of a worker the
    /// bench connects to each replica, half `exec` tasks running `sleep` (the replicas need
    /// `--allow-exec sleep`).
    #[arg(long, default_value_t = 1_000)]
    pub running: u32,

    /// How often each running worker task of `cancel-under-load` reports progress.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub worker_progress: Duration,

    /// Short tasks started per second through the replicas in turn during
    /// `cancel-under-load` (0: none).
    #[arg(long, default_value_t = 2_000.0)]
    pub churn: f64,

    /// Concurrent WatchTask streams in `watch-fanout`, all on replica A.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub watchers: u32,

    /// Tasks the watchers are spread over.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    pub watch_tasks: u16,

    /// HTTP/2 connections the watchers are spread over. Many servers and proxies cap the
    /// concurrent streams of one connection (hyper's default is 200).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
    pub connections: u16,

    /// Steps of each watched task; each one is a change every watcher receives.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..))]
    pub watch_steps: u64,

    /// Time between two steps of a watched task. The tasks step together, so each step is
    /// one burst of `--watchers` deliveries.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub watch_step: Duration,

    /// Tasks of the session `bulk-cancel` cancels at once (PENDING beyond the replicas'
    /// capacity, RUNNING otherwise).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub bulk_tasks: u32,

    /// The Redis the replicas share (`redis://host:port`), whose `INFO commandstats` the
    /// `cost` scenario reads.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,

    /// The `--redis-prefix` of the replicas, for the keys `capacity` measures.
    #[arg(long, default_value = "reins:", value_name = "PREFIX")]
    pub redis_prefix: String,

    /// PENDING tasks `backlog` queues before it measures calls against them (they are left
    /// in Redis).
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub backlog: u64,

    /// Why the tasks of `backlog` wait: `room` (every replica is full of idle tasks) or
    /// `worker` (their kind is served by no connected worker).
    #[arg(long, value_enum, default_value = "room", value_name = "WHY")]
    pub backlog_wait: Wait,

    /// A replica's metrics endpoint (`http://host:port`, its `--metrics-listen`), whose
    /// `reins_store_requests_total` the `cost` scenario counts. Repeat for every replica.
    #[arg(long = "metrics", value_name = "URL")]
    pub metrics: Vec<String>,

    /// Process id of replica A, whose memory (VmRSS) `watch-fanout` reports. Default: the
    /// process listening on its port, found through /proc.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
}

/// The scenarios, in the order a full run takes them: `watch-fanout` first, so the memory
/// it reports is not inflated by the finished tasks the others leave behind (kept for the
/// replicas' retention period).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Many watchers of a few tasks on one replica: delivery latency and memory.
    WatchFanout,
    /// StartTask latency (sleep tasks of 0 steps).
    Start,
    /// StartTask → RUNNING, seen by the client and recorded by the server.
    Dispatch,
    /// Throughput and latency of short tasks, start → COMPLETED, many in flight.
    Lifecycle,
    /// HardCancel through another replica → the task's code stopped.
    HardCancel,
    /// SoftCancel through another replica → the task's code stopped.
    SoftCancel,
    /// CancelTasks of a session of `--bulk-tasks` tasks → every one stopped.
    BulkCancel,
    /// Redis commands and round trips per short task, no watcher (needs `--redis`, and
    /// `--metrics` for the round trips); skipped in a full run without `--redis`.
    Cost,
    /// Cross-replica hard and soft cancels of exec and worker tasks while `--running`
    /// tasks run and `--churn` short tasks a second come and go; only when named.
    CancelUnderLoad,
    /// Memory per task in Redis and in a replica, and CPU per task (needs `--redis`); only
    /// when named.
    Capacity,
    /// Calls against a `--backlog` of PENDING tasks, which it leaves in Redis (needs
    /// `--redis`); only when named, and last.
    Backlog,
}

impl Scenario {
    /// Whether a full run (no `--scenario`) includes it: not the long ones, which load
    /// the machine for minutes.
    pub fn in_full_run(self) -> bool {
        !matches!(
            self,
            Scenario::CancelUnderLoad | Scenario::Capacity | Scenario::Backlog
        )
    }

    /// The name given on the command line.
    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|value| value.get_name().to_owned())
            .unwrap_or_default()
    }
}
