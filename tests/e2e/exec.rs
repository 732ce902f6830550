//! The `exec` kind: programs on the allowlist run in their own process group; exit status,
//! output tails and the stdout convention reach the task; cancels signal the whole group.

use std::path::Path;
use std::time::Duration;

use reins_client::proto::{CancelMode, CancelOutcome, Task, TaskState};
use reins_client::{Client, StartTask};
use reins_e2e::{
    Reinsd, bad_fields, eventually, json_of, process_alive, reason, system_time, wait_finished,
    wait_for,
};
use serde_json::{Value, json};
use tonic::Code;

/// How long the kernel may take to deliver a SIGKILL and the processes to become zombies.
const REAP_WINDOW: Duration = Duration::from_secs(2);

fn exec_server() -> Reinsd {
    Reinsd::with_args(&["--allow-exec", "sh"])
}

/// Params running `script` with `sh -c`.
fn sh_params(script: &str) -> Value {
    json!({ "argv": ["sh", "-c", script] })
}

fn sh(script: &str) -> StartTask {
    StartTask::new("exec").params(sh_params(script))
}

/// `sh -c script` run in `dir`, so the script can use relative file names.
fn sh_in(dir: &Path, script: &str) -> StartTask {
    let mut params = sh_params(script);
    params["cwd"] = json!(dir);
    StartTask::new("exec").params(params)
}

async fn run_to_end(client: &Client, task: StartTask) -> Task {
    let started = client.start(task).await.expect("start the exec task");
    wait_finished(client, &started.id).await
}

fn result_of(task: &Task) -> Value {
    json_of(task.result.as_ref())
}

/// A line scripts print once they are set up (traps installed, pids written).
const READY: &str = "echo '::progress:: 0.1 ready'";

/// Starts `task` and waits until its program has printed [`READY`].
async fn start_ready(client: &Client, task: StartTask) -> Task {
    let started = client.start(task).await.expect("start the exec task");
    wait_for(client, &started.id, "the program to be ready", |task| {
        task.progress.as_ref().is_some_and(|p| p.message == "ready")
    })
    .await
}

/// The pid a script wrote to `file` (waits for the complete line).
async fn pid_in(file: &Path) -> i32 {
    eventually(&format!("a pid in {}", file.display()), || async {
        let text = std::fs::read_to_string(file).ok()?;
        text.strip_suffix('\n')?.parse().ok()
    })
    .await
}

/// Fails unless every process in `pids` is dead (or a zombie) within [`REAP_WINDOW`].
async fn assert_all_dead(pids: &[i32]) {
    let deadline = tokio::time::Instant::now() + REAP_WINDOW;
    loop {
        let alive: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|&pid| process_alive(pid))
            .collect();
        if alive.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes {alive:?} still alive {REAP_WINDOW:?} after the task ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn exit_zero_completes_with_the_exit_code_and_stdout_tail() {
    let server = exec_server();
    let client = server.client().await;
    let task = run_to_end(&client, sh("echo one; echo two")).await;
    assert_eq!(task.state(), TaskState::Completed, "{task:?}");
    assert_eq!(task.error, "");
    let result = result_of(&task);
    assert_eq!(result["exit_code"], 0, "{result}");
    assert_eq!(result["stdout_tail"], json!(["one", "two"]), "{result}");
}

#[tokio::test]
async fn non_zero_exit_fails_with_the_exit_code_and_stderr_tail() {
    let server = exec_server();
    let client = server.client().await;
    let task = run_to_end(&client, sh("echo oops >&2; exit 3")).await;
    assert_eq!(task.state(), TaskState::Failed, "{task:?}");
    assert_eq!(task.error, "exit code 3");
    let result = result_of(&task);
    assert_eq!(result["exit_code"], 3, "{result}");
    assert_eq!(result["stderr_tail"], json!(["oops"]), "{result}");
}

#[tokio::test]
async fn stdout_convention_lines_report_progress_and_checkpoints() {
    let server = exec_server();
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    // Waits for the test to create `gate`, so the progress can be seen while it runs.
    let script = r#"echo '::progress:: 0.5 half'; echo '::checkpoint:: {"n":1}'; echo plain
        while [ ! -e gate ]; do sleep 0.02; done"#;
    let started = client.start(sh_in(dir.path(), script)).await.unwrap();
    let running = wait_for(
        &client,
        &started.id,
        "the progress and checkpoint",
        |task| !task.partial_results.is_empty(),
    )
    .await;
    assert_eq!(running.state(), TaskState::Running);
    let progress = running.progress.as_ref().expect("progress");
    assert_eq!(
        (progress.fraction, progress.message.as_str()),
        (0.5, "half")
    );
    let partials: Vec<Value> = running
        .partial_results
        .iter()
        .map(|v| json_of(Some(v)))
        .collect();
    assert_eq!(partials, [json!({"n": 1})]);

    std::fs::write(dir.path().join("gate"), "").unwrap();
    let done = wait_finished(&client, &started.id).await;
    assert_eq!(done.state(), TaskState::Completed, "{done:?}");
    // Convention lines are not ordinary output.
    assert_eq!(result_of(&done)["stdout_tail"], json!(["plain"]));
}

#[tokio::test]
async fn env_and_cwd_params_reach_the_program() {
    let server = exec_server();
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let task = StartTask::new("exec").params(json!({
        "argv": ["sh", "-c", "echo \"$GREETING\"; pwd -P"],
        "env": { "GREETING": "hello from env" },
        "cwd": dir.path(),
    }));
    let task = run_to_end(&client, task).await;
    assert_eq!(task.state(), TaskState::Completed, "{task:?}");
    let cwd = dir.path().canonicalize().unwrap();
    assert_eq!(
        result_of(&task)["stdout_tail"],
        json!(["hello from env", cwd.to_str().unwrap()])
    );
}

#[tokio::test]
async fn programs_off_the_allowlist_are_permission_denied() {
    let server = exec_server();
    let client = server.client().await;
    let err = client
        .start(StartTask::new("exec").params(json!({"argv": ["ls"]})))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(reason(&err), "EXEC_NOT_ALLOWED");

    let no_exec = Reinsd::start();
    let err = no_exec.client().await.start(sh("true")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(reason(&err), "EXEC_NOT_ALLOWED");
}

#[tokio::test]
async fn wrong_param_types_are_invalid_arguments_naming_each_field() {
    let server = exec_server();
    let client = server.client().await;
    let cases = [
        (json!({"argv": "sh -c true"}), vec!["params.argv"]),
        (json!({"argv": []}), vec!["params.argv"]),
        (json!({}), vec!["params.argv"]),
        (
            json!({"argv": ["sh"], "env": {"A": 1}, "cwd": 5, "stdin": "x"}),
            vec!["params.env", "params.cwd", "params.stdin"],
        ),
    ];
    for (params, fields) in cases {
        let err = client
            .start(StartTask::new("exec").params(params.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{params}: {err:?}");
        let mut got = bad_fields(&err);
        got.sort();
        let mut expected = fields;
        expected.sort();
        assert_eq!(got, expected, "{params}");
    }
}

#[tokio::test]
async fn soft_cancel_sends_sigterm_and_a_clean_exit_ends_cancelled() {
    let server = exec_server();
    let client = server.client().await;
    let script = format!("trap 'echo bye; exit 0' TERM; {READY}; sleep 1000 & wait");
    let task = start_ready(&client, sh(&script)).await;

    let response = client
        .soft_cancel(&task.id, "enough", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(response.outcome(), CancelOutcome::Requested);
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Cancelled, "{done:?}");
    let cancel = done.cancel.as_ref().expect("cancel info");
    assert_eq!(cancel.mode(), CancelMode::Soft);
    assert!(
        !cancel.escalated,
        "the program stopped by itself: {cancel:?}"
    );
    let result = result_of(&done);
    assert_eq!(result["exit_code"], 0, "{result}");
    assert_eq!(result["stdout_tail"], json!(["bye"]), "{result}");
}

#[tokio::test]
async fn hard_cancel_kills_the_whole_process_group() {
    let server = exec_server();
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let script = "sleep 1000 & echo $! > child.pid; echo $$ > main.pid; wait";
    let task = client.start(sh_in(dir.path(), script)).await.unwrap();
    let child = pid_in(&dir.path().join("child.pid")).await;
    let main = pid_in(&dir.path().join("main.pid")).await;
    assert!(process_alive(child) && process_alive(main));

    let response = client.hard_cancel(&task.id, "stop now").await.unwrap();
    assert_eq!(response.outcome(), CancelOutcome::Cancelled);
    let task = response.task.expect("task");
    assert_eq!(task.state(), TaskState::Cancelled);
    assert_all_dead(&[main, child]).await;
}

#[tokio::test]
async fn a_program_ignoring_sigterm_is_killed_after_the_grace_period() {
    let server = exec_server();
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let script = format!("trap '' TERM; echo $$ > main.pid; {READY}; sleep 1000 & wait");
    let task = start_ready(&client, sh_in(dir.path(), &script)).await;
    let main = pid_in(&dir.path().join("main.pid")).await;

    let grace = Duration::from_millis(300);
    let response = client
        .soft_cancel(&task.id, "please stop", Some(grace))
        .await
        .unwrap();
    assert_eq!(response.outcome(), CancelOutcome::Requested);
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Cancelled, "{done:?}");
    let cancel = done.cancel.as_ref().expect("cancel info");
    assert_eq!(cancel.mode(), CancelMode::Hard, "{cancel:?}");
    assert!(cancel.escalated, "{cancel:?}");
    let requested = system_time(cancel.requested_at.as_ref());
    let finished = system_time(done.finished_at.as_ref());
    assert!(
        finished >= requested + grace,
        "escalated before the grace period ran out: {cancel:?}, finished {finished:?}"
    );
    assert_all_dead(&[main]).await;
}

#[tokio::test]
async fn nothing_of_the_group_outlives_the_main_process() {
    let server = exec_server();
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let task = run_to_end(
        &client,
        sh_in(dir.path(), "sleep 1000 & echo $! > child.pid"),
    )
    .await;
    assert_eq!(task.state(), TaskState::Completed, "{task:?}");
    let child = pid_in(&dir.path().join("child.pid")).await;
    assert_all_dead(&[child]).await;
}
