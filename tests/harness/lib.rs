//! Test harness for end-to-end tests: real `reinsd` processes on free loopback ports, and
//! event-driven waits on tasks.
//!
//! A [`Reinsd`] is started on `127.0.0.1:0` and reports the port it bound on stdout; its
//! log goes to a temporary directory and is printed if the test panics. Dropping it kills
//! the process, panicking or not.
//!
//! `REINS_E2E_STORE=redis` runs every server on Redis (a `redis-server` of its own, started
//! on a free port): the same suite holds for both stores.
//!
//! The binary is looked up next to the test executable (`target/<profile>/reinsd`), or at
//! `$REINSD_BIN`. Build it first: `cargo build --bins` (the test script does).

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

mod redis_server;

pub use redis_server::RedisServer;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reins_client::proto::{Task, TaskState};
use reins_client::{Client, WatchOptions};
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
    _redis: Option<RedisServer>,
}

/// Whether the suite runs on Redis (`REINS_E2E_STORE=redis`) rather than the embedded store.
pub fn on_redis() -> bool {
    std::env::var("REINS_E2E_STORE").is_ok_and(|store| store == "redis")
}

impl Reinsd {
    /// A server with the test defaults (replica id [`REPLICA_ID`], short shutdown grace).
    pub fn start() -> Reinsd {
        Reinsd::with_args(&[])
    }

    /// A server with extra flags; a flag given here replaces the test default.
    pub fn with_args(args: &[&str]) -> Reinsd {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("reinsd.log");
        let defaults = [
            ("--listen", "127.0.0.1:0"),
            ("--replica-id", REPLICA_ID),
            ("--shutdown-grace", "2s"),
        ];
        let mut command = Command::new(reinsd_binary());
        let redis = (on_redis() && !args.contains(&"--redis-url")).then(RedisServer::start);
        if let Some(redis) = &redis {
            command.args(["--redis-url", &redis.url()]);
        }
        for (flag, value) in defaults {
            if !args.contains(&flag) {
                command.args([flag, value]);
            }
        }
        let mut child = command
            .args(args)
            .env("RUST_LOG", "info,reins_server=debug")
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
            _redis: redis,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.url())
            .await
            .expect("connect to reinsd")
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Reinsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- reinsd log ({}) ----\n{}", self.address, self.log());
        }
    }
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

pub fn is_terminal(task: &Task) -> bool {
    matches!(
        task.state(),
        TaskState::Completed | TaskState::Failed | TaskState::Cancelled
    )
}

/// Waits for the task's terminal version.
pub async fn wait_finished(client: &Client, id: &str) -> Task {
    wait_for(client, id, "a terminal state", is_terminal).await
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

/// Starts a `sleep` task of `steps` × `step_ms`.
pub async fn start_sleep(client: &Client, steps: u64, step_ms: u64) -> Task {
    client
        .start(reins_client::StartTask::new("sleep").params(sleep_params(steps, step_ms)))
        .await
        .expect("start a sleep task")
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
