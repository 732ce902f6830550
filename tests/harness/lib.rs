//! Test harness for end-to-end tests: real `reinsd` processes on free loopback ports, and
//! event-driven waits on tasks.
//!
//! A [`Reinsd`] is started on `127.0.0.1:0` and reports the port it bound on stdout; its
//! log goes to a temporary directory and is printed if the test panics. Dropping it kills
//! the process, panicking or not.
//!
//! `REINS_E2E_STORE=redis` runs every server on Redis (a `redis-server` of its own, started
//! on a free port), `REINS_E2E_STORE=redis-cluster` on a Redis Cluster (three masters
//! shared by the test process, a key prefix per server or deployment): the same suite
//! holds for every store.
//!
//! The binary is looked up next to the test executable (`target/<profile>/reinsd`), or at
//! `$REINSD_BIN`. Build it first: `cargo build --bins` (the test script does).

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

pub mod auth;
pub mod http2;
pub mod pki;
pub mod prometheus;
pub mod proxy;
pub mod raw;
mod redis_cluster;
mod redis_server;
pub mod worker;

pub use redis_cluster::{RedisCluster, TestRedis};
pub use redis_server::{RedisServer, free_port};
pub use worker::FakeWorker;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reins_client::proto::{Task, TaskState};
use reins_client::{Client, StartTask, WatchOptions};
use tokio_stream::StreamExt;

/// Upper bound of every wait in the tests: generous, as the CI machine is shared.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub const REPLICA_ID: &str = "test-replica";

pub fn reinsd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("REINSD_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-<hash> → target/<profile>/reinsd
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("reinsd");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first",
        path.display()
    );
    path
}

pub fn reins_cli_binary() -> PathBuf {
    reinsd_binary().with_file_name("reins")
}

/// A running `reinsd` process.
pub struct Reinsd {
    child: Child,
    address: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
    /// The Redis of a server started on Redis by `REINS_E2E_STORE`; stopped after it.
    redis: Option<TestRedis>,
}

/// Whether the suite runs on Redis (`REINS_E2E_STORE=redis` or `redis-cluster`) rather
/// than the embedded store.
pub fn on_redis() -> bool {
    std::env::var("REINS_E2E_STORE").is_ok_and(|store| store == "redis" || store == "redis-cluster")
}

/// Whether the suite runs on a Redis Cluster (`REINS_E2E_STORE=redis-cluster`).
pub fn on_redis_cluster() -> bool {
    std::env::var("REINS_E2E_STORE").is_ok_and(|store| store == "redis-cluster")
}

impl Reinsd {
    /// A server with the test defaults (replica id [`REPLICA_ID`], short shutdown grace).
    pub fn start() -> Reinsd {
        Reinsd::with_args(&[])
    }

    /// A server with extra flags; a flag given here replaces the test default.
    pub fn with_args(args: &[&str]) -> Reinsd {
        Reinsd::spawn(args, None, &[])
    }

    /// A server with extra flags and extra environment variables (e.g. `OTEL_*`).
    pub fn with_env(args: &[&str], env: &[(&str, &str)]) -> Reinsd {
        Reinsd::spawn(args, None, env)
    }

    /// A server with extra flags whose process starts with the open-files limits `soft`
    /// and `hard` (as `ulimit -Sn`/`-Hn` set them).
    pub fn with_open_files_limit(args: &[&str], soft: u64, hard: u64) -> Reinsd {
        Reinsd::spawn(args, Some((soft, hard)), &[])
    }

    fn spawn(args: &[&str], open_files: Option<(u64, u64)>, env: &[(&str, &str)]) -> Reinsd {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("reinsd.log");
        let defaults = [
            ("--listen", "127.0.0.1:0"),
            ("--replica-id", REPLICA_ID),
            ("--shutdown-grace", "2s"),
        ];
        let mut command = Command::new(reinsd_binary());
        let redis = (on_redis() && !args.contains(&"--redis-url")).then(TestRedis::for_this_run);
        if let Some(redis) = &redis {
            command.args(redis.args());
        }
        for (flag, value) in defaults {
            if !args.contains(&flag) {
                command.args([flag, value]);
            }
        }
        if let Some((soft, hard)) = open_files {
            use nix::sys::resource::{Resource, setrlimit};
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec the closure makes one system call, nothing that
            // allocates or takes a lock.
            unsafe {
                command.pre_exec(move || {
                    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).map_err(std::io::Error::from)
                });
            }
        }
        let mut child = command
            .args(args)
            .env("RUST_LOG", "info,reins_server=debug")
            // Plain text, which tests can search.
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start reinsd");
        let mut first_line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first_line)
            .expect("read reinsd stdout");
        let Some(address) = first_line.trim().strip_prefix("reinsd listening on ") else {
            let _ = child.kill();
            panic!(
                "reinsd did not start: {first_line:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Reinsd {
            address: address.to_owned(),
            child,
            log,
            _dir: dir,
            redis,
        }
    }

    /// The flags of the Redis it was started on by `REINS_E2E_STORE`, if any: another
    /// replica started with them sees the same tasks.
    pub fn own_redis_args(&self) -> Option<Vec<String>> {
        self.redis.as_ref().map(TestRedis::args)
    }

    /// The address it serves on, `host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A client without the shipped service config's retries: the tests see each answer of
    /// the server as it is (tests/e2e/proxy.rs checks the retries).
    pub async fn client(&self) -> Client {
        Client::connect(self.url())
            .await
            .expect("connect to reinsd")
            .with_service_config(reins_client::ServiceConfig::default())
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The server's resident memory (`VmRSS` of /proc/<pid>/status), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the server's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal reinsd");
    }

    /// Waits for the process to exit, at most `within`; `None` if it is still running.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait reinsd") {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process (if it still runs) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Reinsd {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- reinsd log ({}) ----\n{}", self.address, self.log());
        }
    }
}

/// Replicas of one deployment: `reinsd` processes sharing one [`RedisServer`], with the
/// replica ids `a`, `b`, `c`, … (index 0 is `a`). Each replica is a [`Reinsd`], so its log
/// is printed if the test panics.
pub struct Cluster {
    replicas: Vec<Reinsd>,
    /// Processes replaced by [`Cluster::restart_replica`], kept for their logs.
    retired: Vec<Reinsd>,
    ids: Vec<String>,
    args: Vec<String>,
    redis: TestRedis,
}

impl Cluster {
    /// `n` replicas with the extra flags `args`, on a Redis of their own (a prefix of
    /// their own on the shared Redis Cluster under `REINS_E2E_STORE=redis-cluster`).
    pub fn start(n: usize, args: &[&str]) -> Cluster {
        Cluster::on_store(TestRedis::for_this_run(), n, args)
    }

    /// `n` replicas with the extra flags `args`, on `redis`.
    pub fn on(redis: RedisServer, n: usize, args: &[&str]) -> Cluster {
        Cluster::on_store(TestRedis::Server(redis), n, args)
    }

    /// `n` replicas with the extra flags `args`, keeping their state in `redis`.
    pub fn on_store(redis: TestRedis, n: usize, args: &[&str]) -> Cluster {
        let mut cluster = Cluster {
            replicas: Vec::new(),
            retired: Vec::new(),
            ids: Vec::new(),
            args: args.iter().map(|&arg| arg.to_owned()).collect(),
            redis,
        };
        for _ in 0..n {
            cluster.add_replica();
        }
        cluster
    }

    fn spawn(redis: &TestRedis, id: &str, args: &[String]) -> Reinsd {
        let store = redis.args();
        let mut all: Vec<&str> = store.iter().map(String::as_str).collect();
        all.extend(["--replica-id", id]);
        all.extend(args.iter().map(String::as_str));
        Reinsd::with_args(&all)
    }

    /// Starts one more replica (the next letter); returns its index.
    pub fn add_replica(&mut self) -> usize {
        let i = self.ids.len();
        assert!(i < 26, "replica ids are single letters");
        let id = char::from(b'a' + i as u8).to_string();
        self.replicas
            .push(Cluster::spawn(&self.redis, &id, &self.args));
        self.ids.push(id);
        i
    }

    /// The replica id of replica `i`.
    pub fn id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    /// The index of the replica that runs (or ran) `task`.
    pub fn owner_of(&self, task: &Task) -> usize {
        self.ids
            .iter()
            .position(|id| *id == task.owner)
            .unwrap_or_else(|| panic!("owner {:?} is no replica of {:?}", task.owner, self.ids))
    }

    /// The index of a replica other than `i`.
    pub fn other_than(&self, i: usize) -> usize {
        (0..self.ids.len())
            .find(|&j| j != i)
            .expect("a cluster of more than one replica")
    }

    /// Reads task `id` from every replica whose process is alive, asserts that they all
    /// return the same record, and returns it.
    pub async fn check_everywhere(&self, id: &str) -> Task {
        let mut seen: Option<(usize, Task)> = None;
        for (i, replica) in self.replicas.iter().enumerate() {
            if !process_alive(replica.pid().as_raw()) {
                continue;
            }
            let task = replica
                .client()
                .await
                .check(id)
                .await
                .unwrap_or_else(|status| {
                    panic!("CheckTask {id} on replica {}: {status:?}", self.ids[i])
                });
            match &seen {
                None => seen = Some((i, task)),
                Some((first, expected)) => assert_eq!(
                    &task, expected,
                    "replicas {} and {} disagree about task {id}",
                    self.ids[*first], self.ids[i]
                ),
            }
        }
        seen.expect("a live replica").1
    }

    pub fn replica(&self, i: usize) -> &Reinsd {
        &self.replicas[i]
    }

    pub fn replica_mut(&mut self, i: usize) -> &mut Reinsd {
        &mut self.replicas[i]
    }

    pub async fn client(&self, i: usize) -> Client {
        self.replicas[i].client().await
    }

    pub fn redis(&mut self) -> &mut RedisServer {
        self.redis.server()
    }

    /// Replaces replica `i` with a new process under the same replica id and flags (the
    /// old process is killed first if it still runs).
    pub fn restart_replica(&mut self, i: usize) -> &Reinsd {
        self.replicas[i].kill();
        let fresh = Cluster::spawn(&self.redis, &self.ids[i], &self.args);
        let old = std::mem::replace(&mut self.replicas[i], fresh);
        self.retired.push(old);
        &self.replicas[i]
    }
}

/// An `exec` task (the server needs `--allow-exec sh`) whose program shows it is alive:
/// it writes its pid to a file, then every 50 ms bumps a counter in another file and
/// reports progress, until it is killed. It runs in its own process group, so it lives on
/// whatever happens to the server that started it.
pub struct Heartbeat {
    dir: tempfile::TempDir,
}

impl Heartbeat {
    const SCRIPT: &str = r#"echo $$ > pid.tmp && mv pid.tmp pid
        i=0
        while :; do
          i=$((i+1)); echo $i > beat.tmp && mv beat.tmp beat
          echo "::progress:: 0.5 beat $i"
          sleep 0.05
        done"#;

    pub fn new() -> Heartbeat {
        Heartbeat {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn task(&self) -> StartTask {
        StartTask::new("exec").params(serde_json::json!({
            "argv": ["sh", "-c", Heartbeat::SCRIPT],
            "cwd": self.dir.path(),
        }))
    }

    /// The program's pid, once it has written it.
    pub async fn pid(&self) -> i32 {
        eventually("the heartbeat program's pid", || async {
            std::fs::read_to_string(self.dir.path().join("pid"))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .await
    }

    /// How many beats the program has written so far.
    pub fn beats(&self) -> u64 {
        std::fs::read_to_string(self.dir.path().join("beat"))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until the program beats a few more times: it is running now.
    pub async fn wait_beating(&self) {
        let from = self.beats();
        eventually("the program to beat", || async {
            (self.beats() >= from + 3).then_some(())
        })
        .await;
    }

    /// Waits until the program's process is gone.
    pub async fn wait_dead(&self) {
        let pid = self.pid().await;
        eventually(
            &format!("the heartbeat program (pid {pid}) to die"),
            || async { (!process_alive(pid)).then_some(()) },
        )
        .await;
    }
}

impl Default for Heartbeat {
    fn default() -> Heartbeat {
        Heartbeat::new()
    }
}

/// A gRPC channel of its own to `server` (a new connection).
pub async fn channel(server: &Reinsd) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(server.url())
        .expect("server url")
        .connect()
        .await
        .expect("connect to reinsd")
}

/// The health of `service` as `grpc.health.v1.Health/Check` reports it.
pub async fn health(
    channel: &tonic::transport::Channel,
    service: &str,
) -> tonic_health::pb::health_check_response::ServingStatus {
    let request = tonic_health::pb::HealthCheckRequest {
        service: service.to_owned(),
    };
    let response = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(request)
        .await
        .unwrap_or_else(|status| panic!("health check of {service:?}: {status:?}"));
    response.into_inner().status()
}

/// Polls `check` until it returns `Some`, failing the test after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Watches task `id` until `predicate` holds for a version of it; returns that version.
pub async fn wait_for(
    client: &Client,
    id: &str,
    what: &str,
    predicate: impl Fn(&Task) -> bool,
) -> Task {
    let watching = async {
        let mut events = client
            .watch(id, WatchOptions::default())
            .await
            .expect("watch");
        while let Some(event) = events.next().await {
            let task = event.expect("watch event").task.expect("event task");
            if predicate(&task) {
                return task;
            }
        }
        panic!("task {id} ended without {what}");
    };
    tokio::time::timeout(PATIENCE, watching)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what} of task {id}"))
}

/// `task` once it has started (StartTask may answer while it is still PENDING): the
/// version that names its owner.
pub async fn started(client: &Client, task: Task) -> Task {
    if !task.owner.is_empty() {
        return task;
    }
    wait_for(client, &task.id, "the start", |task| !task.owner.is_empty()).await
}

/// Waits for the task's terminal version.
pub async fn wait_finished(client: &Client, id: &str) -> Task {
    wait_for(client, id, "a terminal state", |task| {
        task.state().is_terminal()
    })
    .await
}

pub async fn wait_state(client: &Client, id: &str, state: TaskState) -> Task {
    wait_for(client, id, state.as_str_name(), |task| {
        task.state() == state
    })
    .await
}

/// Params of a `sleep` task.
pub fn sleep_params(steps: u64, step_ms: u64) -> serde_json::Value {
    serde_json::json!({ "steps": steps, "step_ms": step_ms })
}

/// A `sleep` task that runs for minutes, checkpointing every 50 ms.
pub fn long_sleep() -> StartTask {
    StartTask::new("sleep").params(sleep_params(10_000, 50))
}

/// A long `sleep` task that ignores soft cancels: only a hard cancel (or escalation) stops it.
pub fn stuck_sleep() -> StartTask {
    StartTask::new("sleep")
        .params(serde_json::json!({"steps": 10_000, "step_ms": 50, "ignore_soft_cancel": true}))
}

/// A short `sleep` task that asks `question` after its first step and waits in
/// WAITING_FOR_ANSWER until it is answered; then it finishes its second step and completes.
pub fn asking(question: &str) -> StartTask {
    StartTask::new("sleep").params(serde_json::json!({"steps": 2, "step_ms": 10, "ask": question}))
}

/// Starts a `sleep` task of `steps` × `step_ms`.
pub async fn start_sleep(client: &Client, steps: u64, step_ms: u64) -> Task {
    client
        .start(reins_client::StartTask::new("sleep").params(sleep_params(steps, step_ms)))
        .await
        .expect("start a sleep task")
}

/// Watch options that resume after `version` (replaying the later versions).
pub fn resume_after(version: u64) -> WatchOptions {
    WatchOptions {
        after_version: version,
        ..WatchOptions::default()
    }
}

/// A timestamp of a task (which must be set) as a `SystemTime`.
pub fn system_time(timestamp: Option<&prost_types::Timestamp>) -> std::time::SystemTime {
    std::time::SystemTime::try_from(*timestamp.expect("timestamp set")).expect("timestamp in range")
}

/// The google.rpc `ErrorInfo.reason` of a status, if any.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

/// The fields named by the google.rpc `BadRequest` of a status.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|v| v.field.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether process `pid` is alive (a zombie is not).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// A protobuf value (a task's result or checkpoint) as JSON; `null` if unset.
pub fn json_of(value: Option<&prost_types::Value>) -> serde_json::Value {
    value.map_or(serde_json::Value::Null, |value| {
        reins_proto::json::value_to_json(value).expect("finite numbers")
    })
}

/// Starts `reinsd` with `args` and the environment variables `env`, which must make it
/// refuse to start (it exits without listening); returns what it said on stderr.
pub fn refused_at_startup(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut child = Command::new(reinsd_binary())
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start reinsd");
    let mut first_line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first_line)
        .expect("read reinsd stdout");
    if !first_line.is_empty() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("reinsd {args:?} {env:?} started: {first_line:?}");
    }
    let output = child.wait_with_output().expect("reinsd exits");
    assert!(!output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}
