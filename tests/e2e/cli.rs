//! The `reins` command line against a real server: output formats, exit statuses and error
//! messages.

use std::process::{Command, ExitStatus, Stdio};

use reins_client::proto::TaskState;
use reins_client::{Client, StartTask};
use reins_e2e::{
    PATIENCE, Reinsd, json_of, reins_cli_binary, sleep_params, start_sleep, wait_finished,
    wait_state,
};
use serde_json::{Value, json};

/// What one run of `reins` printed and how it exited.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn assert_success(&self) -> &Run {
        assert!(self.status.success(), "reins failed: {self:?}");
        self
    }

    fn assert_failure(&self) -> &Run {
        assert!(!self.status.success(), "reins should have failed: {self:?}");
        self
    }

    /// The value of a `label: value` row of a task summary.
    fn row(&self, label: &str) -> &str {
        let prefix = format!("{label}:");
        self.stdout
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {label} row in:\n{}", self.stdout))
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("stdout is not one JSON value ({err}):\n{}", self.stdout))
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `reins --server <url> args…` with stdout piped (not a terminal), at most [`PATIENCE`].
async fn reins_at(url: &str, args: &[&str]) -> Run {
    reins_with_env(url, args, &[]).await
}

/// [`reins_at`] with extra environment variables.
async fn reins_with_env(url: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(reins_cli_binary());
    command
        .arg("--server")
        .arg(url)
        .args(args)
        .env_remove("REINS_SERVER")
        .env_remove("TRACEPARENT")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    let output = tokio::time::timeout(PATIENCE, command.output())
        .await
        .unwrap_or_else(|_| panic!("reins {args:?} did not finish"))
        .expect("run reins");
    Run {
        status: output.status,
        stdout: String::from_utf8(output.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("utf-8 stderr"),
    }
}

async fn reins(server: &Reinsd, args: &[&str]) -> Run {
    reins_at(&server.url(), args).await
}

async fn start_long_sleep(client: &Client) -> String {
    let task = start_sleep(client, 1000, 50).await;
    task.id
}

#[tokio::test]
async fn start_with_json_prints_the_task_as_proto_json() {
    let server = Reinsd::start();
    let run = reins(
        &server,
        &[
            "start",
            "sleep",
            "--params",
            r#"{"steps":1,"step_ms":10}"#,
            "--json",
        ],
    )
    .await;
    let task = run.assert_success().json();
    let id = task["id"].as_str().expect("an id");
    assert_eq!(task["kind"], "sleep");
    // Struct numbers are doubles: compare them as numbers, whichever way they are written.
    let params = &task["params"];
    assert_eq!(
        (params["steps"].as_f64(), params["step_ms"].as_f64()),
        (Some(1.0), Some(10.0))
    );

    let client = server.client().await;
    assert_eq!(
        client.check(id).await.expect("the started task").kind,
        "sleep"
    );
}

/// With traces on (the collector need not be reachable: export failures cost a warning),
/// `reins` joins the trace named by `$TRACEPARENT`, and the task it starts carries it.
#[tokio::test]
async fn start_joins_the_trace_of_traceparent_and_prints_its_trace_id() {
    let server = Reinsd::with_env(
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")],
    );
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let run = reins_with_env(
        &server.url(),
        &[
            "start",
            "sleep",
            "--params",
            r#"{"steps":1,"step_ms":10}"#,
            "--json",
        ],
        &[("TRACEPARENT", &traceparent)],
    )
    .await;
    let task = run.assert_success().json();
    assert_eq!(task["traceId"], trace_id, "{task}");

    let run = reins_with_env(
        &server.url(),
        &["check", task["id"].as_str().expect("an id")],
        &[],
    )
    .await;
    assert_eq!(run.assert_success().row("trace"), trace_id);

    // Without a caller's trace the server starts one of its own.
    let task = reins(
        &server,
        &[
            "start",
            "sleep",
            "--params",
            r#"{"steps":1,"step_ms":10}"#,
            "--json",
        ],
    )
    .await
    .assert_success()
    .json();
    let own = task["traceId"].as_str().expect("a trace id");
    assert!(own.len() == 32 && own != trace_id, "{task}");
}

#[tokio::test]
async fn check_shows_the_state_of_a_task() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = start_sleep(&client, 1, 10).await;
    let done = wait_finished(&client, &task.id).await;

    let run = reins(&server, &["check", &task.id]).await;
    run.assert_success();
    assert_eq!(run.row("task"), task.id);
    assert_eq!(
        run.row("state"),
        format!("COMPLETED (version {}, attempt 1)", done.version)
    );

    let json = reins(&server, &["check", &task.id, "--json"])
        .await
        .assert_success()
        .json();
    assert_eq!(json["state"], "TASK_STATE_COMPLETED");
}

#[tokio::test]
async fn piped_watch_prints_a_line_per_event_ending_with_the_terminal_state() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = start_sleep(&client, 3, 100).await;

    let run = reins(&server, &["watch", &task.id]).await;
    run.assert_success();
    // `<version> <STATE> <fraction> <message>`
    let lines: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .map(|line| line.split(' ').collect())
        .collect();
    assert!(lines.len() >= 2, "{run:?}");
    let versions: Vec<u64> = lines.iter().map(|line| line[0].parse().unwrap()).collect();
    assert!(
        versions.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "one line per version: {versions:?}"
    );
    let last = lines.last().unwrap();
    assert_eq!(last[1..], ["COMPLETED", "1.00", "step", "3/3"], "{run:?}");
    let finished = client.check(&task.id).await.unwrap();
    assert_eq!(*versions.last().unwrap(), finished.version);
}

#[tokio::test]
async fn soft_cancel_reports_requested_then_already_cancelled() {
    let server = Reinsd::start();
    let client = server.client().await;
    let id = start_long_sleep(&client).await;

    let run = reins(&server, &["cancel", &id, "--reason", "enough"]).await;
    let first = run
        .assert_success()
        .stdout
        .lines()
        .next()
        .unwrap_or_default();
    assert_eq!(
        first,
        "cancel requested: the task stops at its next checkpoint"
    );
    let done = wait_finished(&client, &id).await;
    assert_eq!(done.state(), TaskState::Cancelled);
    assert_eq!(done.cancel.expect("cancel info").reason, "enough");

    let again = reins(&server, &["cancel", &id]).await;
    let first = again
        .assert_success()
        .stdout
        .lines()
        .next()
        .unwrap_or_default();
    assert_eq!(first, "already cancelled, nothing changed");
}

#[tokio::test]
async fn hard_cancel_reports_the_task_cancelled() {
    let server = Reinsd::start();
    let client = server.client().await;
    let id = start_long_sleep(&client).await;

    let run = reins(&server, &["cancel", &id, "--hard"]).await;
    let first = run
        .assert_success()
        .stdout
        .lines()
        .next()
        .unwrap_or_default();
    assert_eq!(first, "cancelled");
    assert!(run.row("state").starts_with("CANCELLED "), "{run:?}");
    assert!(
        run.row("cancel").starts_with("hard cancel requested"),
        "{run:?}"
    );
    assert_eq!(
        client.check(&id).await.unwrap().state(),
        TaskState::Cancelled
    );
}

#[tokio::test]
async fn list_filters_by_label() {
    let server = Reinsd::start();
    let client = server.client().await;
    let start_labelled = |team: &'static str| {
        let client = client.clone();
        async move {
            let task = StartTask::new("sleep")
                .params(sleep_params(1000, 50))
                .label("team", team);
            client.start(task).await.unwrap().id
        }
    };
    let infra = start_labelled("infra").await;
    let web = start_labelled("web").await;

    let run = reins(&server, &["list", "--label", "team=infra"]).await;
    run.assert_success();
    let ids: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert_eq!(ids, [infra.as_str()], "{run:?}");
    assert!(!run.stdout.contains(&web));
}

#[tokio::test]
async fn answer_resumes_a_task_waiting_for_an_answer() {
    let server = Reinsd::start();
    let client = server.client().await;
    let params = json!({ "steps": 2, "step_ms": 10, "ask": "proceed?" });
    let task = client
        .start(StartTask::new("sleep").params(params))
        .await
        .unwrap();
    wait_state(&client, &task.id, TaskState::WaitingForAnswer).await;

    let run = reins(&server, &["answer", &task.id, "yes"]).await;
    run.assert_success();
    assert_eq!(run.row("answer"), "yes");
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Completed, "{done:?}");
    assert_eq!(json_of(done.result.as_ref())["answer"], "yes");
}

#[tokio::test]
async fn check_of_an_unknown_task_fails_with_not_found() {
    let server = Reinsd::start();
    let run = reins(&server, &["check", "01900000-0000-7000-8000-000000000000"]).await;
    run.assert_failure();
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(run.stderr.contains("not found"), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
}

#[tokio::test]
async fn params_that_are_not_json_are_a_usage_error() {
    let server = Reinsd::start();
    let run = reins(&server, &["start", "sleep", "--params", "{steps: 1}"]).await;
    run.assert_failure();
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert!(run.stderr.contains("--params"), "{run:?}");
    assert!(run.stderr.contains("not valid JSON"), "{run:?}");
    let listed = server
        .client()
        .await
        .list(Default::default())
        .await
        .unwrap();
    assert!(listed.tasks.is_empty(), "no task was started: {listed:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_reported() {
    // A port that was free a moment ago: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let run = reins_at(&url, &["check", "01900000-0000-7000-8000-000000000000"]).await;
    run.assert_failure();
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(run.stderr.contains("cannot reach server"), "{run:?}");
    assert!(run.stderr.contains(&url), "{run:?}");
}

#[tokio::test]
async fn budgets_show_in_check_and_bulk_cancel_prints_its_counts() {
    let server = Reinsd::start();
    let client = server.client().await;
    let run = reins(
        &server,
        &[
            "start",
            "sleep",
            "--params",
            r#"{"steps":50,"step_ms":10}"#,
            "--budget",
            "steps=2",
            "--json",
        ],
    )
    .await;
    let id = run.assert_success().json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_finished(&client, &id).await;
    let check = reins(&server, &["check", &id]).await;
    assert_eq!(check.assert_success().row("usage"), "steps 2 / 2");

    for _ in 0..3 {
        client
            .start(
                StartTask::new("sleep")
                    .params(sleep_params(1000, 50))
                    .session("cli"),
            )
            .await
            .unwrap();
    }
    let dry = reins(&server, &["cancel", "--session", "cli", "--dry-run"]).await;
    assert!(
        dry.assert_success()
            .stdout
            .starts_with("3 tasks match (dry run"),
        "{dry:?}"
    );
    let done = reins(&server, &["cancel", "--session", "cli", "--hard"]).await;
    assert!(
        done.assert_success()
            .stdout
            .starts_with("3 matched: 3 cancelled, 0 asked to stop, 0 already finished"),
        "{done:?}"
    );
    let json = reins(&server, &["cancel", "--kind", "sleep", "--json"]).await;
    assert_eq!(
        json.assert_success().json()["matched"],
        Value::Null,
        "0 is omitted"
    );
}

#[tokio::test]
async fn run_exits_with_the_tasks_outcome() {
    let server = Reinsd::start();
    let done = reins(
        &server,
        &["run", "sleep", "--params", r#"{"steps":2,"step_ms":10}"#],
    )
    .await;
    assert!(
        done.assert_success().stdout.contains("COMPLETED"),
        "{done:?}"
    );
    let stopped = reins(
        &server,
        &[
            "run",
            "sleep",
            "--params",
            r#"{"steps":50,"step_ms":10}"#,
            "--budget",
            "steps=1",
        ],
    )
    .await;
    assert_eq!(stopped.status.code(), Some(1), "{stopped:?}");
    assert!(stopped.stdout.contains("CANCELLED"), "{stopped:?}");
}

/// `reins run` with a long task, once it has printed the task's first version; returns
/// the process and the task id.
async fn running_cli(server: &Reinsd, params: &str) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut command = tokio::process::Command::new(reins_cli_binary());
    command
        .args([
            "--server",
            &server.url(),
            "run",
            "sleep",
            "--params",
            params,
        ])
        .env_remove("REINS_SERVER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("start reins run");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let client = server.client().await;
    let first = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("a first line")
        .unwrap()
        .expect("reins run printed a line");
    assert!(
        first.contains("RUNNING") || first.contains("PENDING"),
        "{first}"
    );
    // The line names no id: find the task, the only active one.
    let active = client
        .list(reins_client::proto::ListActiveRequest::default())
        .await
        .unwrap();
    let id = active.tasks[0].id.clone();
    // Keep reading, so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, id)
}

fn signal(child: &tokio::process::Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id().expect("running") as i32);
    nix::sys::signal::kill(pid, signal).expect("signal reins");
}

#[tokio::test]
async fn killing_reins_run_soft_cancels_its_task() {
    let server = Reinsd::start();
    let client = server.client().await;
    let (mut child, id) = running_cli(&server, r#"{"steps":10000,"step_ms":50}"#).await;
    signal(&child, nix::sys::signal::Signal::SIGKILL);
    child.wait().await.unwrap();
    let done = wait_finished(&client, &id).await;
    assert_eq!(done.state(), TaskState::Cancelled);
    assert_eq!(done.cancel.unwrap().reason, "caller disconnected");
}

#[tokio::test]
async fn ctrl_c_soft_cancels_and_a_second_one_hard_cancels() {
    use nix::sys::signal::Signal::SIGINT;
    let server = Reinsd::start();
    let client = server.client().await;
    // Stops at once when asked: one Ctrl-C is enough, and reins waits for the end.
    let (mut child, id) = running_cli(&server, r#"{"steps":10000,"step_ms":50}"#).await;
    signal(&child, SIGINT);
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(130));
    let done = client.check(&id).await.unwrap();
    assert_eq!(
        done.state(),
        TaskState::Cancelled,
        "stopped before reins exited"
    );
    assert_eq!(done.cancel.unwrap().reason, "interrupted (Ctrl-C)");

    // Ignores soft cancels: reins keeps following until the second Ctrl-C hard-cancels it.
    let (mut child, id) = running_cli(
        &server,
        r#"{"steps":10000,"step_ms":50,"ignore_soft_cancel":true}"#,
    )
    .await;
    signal(&child, SIGINT);
    reins_e2e::eventually("the soft cancel", || async {
        client.check(&id).await.unwrap().cancel
    })
    .await;
    assert!(child.try_wait().unwrap().is_none(), "still following");
    signal(&child, SIGINT);
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(130));
    let done = client.check(&id).await.unwrap();
    assert_eq!(done.state(), TaskState::Cancelled);
    let cancel = done.cancel.unwrap();
    assert_eq!(cancel.mode(), reins_client::proto::CancelMode::Hard);
    assert!(
        !cancel.escalated,
        "hard-cancelled by the second Ctrl-C, not by the grace"
    );
}
