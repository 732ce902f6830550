//! The `exec` kind: programs on the allowlist run in their own process group, under a
//! subreaper of their own; exit status, output tails and the stdout convention reach the
//! task; cancels signal the whole group, and nothing below the program outlives the task.
//! `argv[0]` is found on the server's PATH, the environment is minimal, and the operator's
//! rlimits apply.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reins_client::proto::{CancelMode, CancelOutcome, Task, TaskState};
use reins_client::{Client, StartTask};
use reins_e2e::{
    Reinsd, bad_fields, eventually, json_of, process_alive, reason, refused_at_startup,
    system_time, wait_finished, wait_for,
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

/// Fails unless every process in `pids` is gone within [`REAP_WINDOW`]: dead *and* reaped,
/// no zombie left behind.
async fn assert_all_reaped(pids: &[i32]) {
    let deadline = tokio::time::Instant::now() + REAP_WINDOW;
    loop {
        let left: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes {left:?} still exist (alive or zombies) {REAP_WINDOW:?} after the task ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Pids a test's programs wrote, SIGKILLed when the test ends so that a failing run (a
/// server that lets them escape) leaves nothing behind on the machine.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if process_alive(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// A script that starts two processes that leave the program's process group: one that
/// called `setsid`, and a daemon that double-forked (its parent exited after starting it in
/// a new session). They write their pids to `setsid.pid` and `daemon.pid`.
const ESCAPERS: &str = "setsid sh -c 'echo $$ > setsid.pid; exec sleep 1000' &
    setsid sh -c 'sleep 1000 & echo $! > daemon.pid' &";

/// The pids [`ESCAPERS`] wrote in `dir`, checked alive, to be killed at the end of the test.
async fn escapers_in(dir: &Path) -> KillOnDrop {
    let pids = vec![
        pid_in(&dir.join("setsid.pid")).await,
        pid_in(&dir.join("daemon.pid")).await,
    ];
    for &pid in &pids {
        assert!(process_alive(pid), "process {pid} runs");
    }
    KillOnDrop(pids)
}

/// Writes an executable shell script `name` into `dir` that creates the file `ran` in
/// `dir` and prints `FAKE`: a program planted by an attacker.
fn plant(dir: &Path, name: &str) -> PathBuf {
    let script = dir.join(name);
    let marker = dir.join("ran");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch '{}'\necho FAKE\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    marker
}

/// The first error StartTask gives for `params`.
async fn start_error(client: &Client, params: Value) -> tonic::Status {
    client
        .start(StartTask::new("exec").params(params.clone()))
        .await
        .expect_err(&format!("StartTask with {params} is refused"))
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

#[tokio::test]
async fn a_program_killed_by_a_signal_fails_naming_it() {
    let server = exec_server();
    let client = server.client().await;
    let task = run_to_end(&client, sh("kill -SEGV $$")).await;
    assert_eq!(task.state(), TaskState::Failed, "{task:?}");
    assert_eq!(task.error, "killed by signal SIGSEGV");
    let result = result_of(&task);
    assert_eq!(result["signal"], "SIGSEGV", "{result}");
    assert_eq!(result["exit_code"], Value::Null, "{result}");
}

#[tokio::test]
async fn hard_cancel_kills_descendants_that_left_the_process_group() {
    let server = exec_server();
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    // The program's parent is its subreaper, which the server must reap in turn.
    let script = format!("{ESCAPERS}\necho $PPID > parent.pid; echo $$ > main.pid; wait");
    let task = client.start(sh_in(dir.path(), &script)).await.unwrap();
    let main = pid_in(&dir.path().join("main.pid")).await;
    let parent = pid_in(&dir.path().join("parent.pid")).await;
    let escapers = escapers_in(dir.path()).await;

    let response = client.hard_cancel(&task.id, "stop now").await.unwrap();
    assert_eq!(response.outcome(), CancelOutcome::Cancelled);
    assert_all_reaped(&[&[main, parent], escapers.0.as_slice()].concat()).await;
}

#[tokio::test]
async fn a_program_that_exits_takes_its_setsid_descendants_with_it() {
    let server = exec_server();
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    // The FIFO makes the program wait until the escaper has written its pid, then exit.
    let script = "mkfifo ready
        setsid sh -c 'echo $$ > setsid.pid; echo > ready; exec sleep 1000' &
        read line < ready";
    let started = client.start(sh_in(dir.path(), script)).await.unwrap();
    let escaper = KillOnDrop(vec![pid_in(&dir.path().join("setsid.pid")).await]);
    // (A server that let the escaper live would also wait forever for the end of the
    // stdout it holds.)
    let task = wait_finished(&client, &started.id).await;
    assert_eq!(task.state(), TaskState::Completed, "{task:?}");
    assert_all_reaped(&escaper.0).await;
}

#[tokio::test]
async fn a_server_killed_by_sigkill_leaves_nothing_of_its_tasks_running() {
    let mut server = exec_server();
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let script = format!("{ESCAPERS}\necho $$ > main.pid; wait");
    client.start(sh_in(dir.path(), &script)).await.unwrap();
    let main = KillOnDrop(vec![pid_in(&dir.path().join("main.pid")).await]);
    let escapers = escapers_in(dir.path()).await;

    server.kill();
    assert_all_reaped(&[main.0.as_slice(), escapers.0.as_slice()].concat()).await;
}

#[tokio::test]
async fn a_client_path_is_refused_and_never_used_to_find_the_program() {
    let server = Reinsd::with_args(&["--allow-exec", "date"]);
    let client = server.client().await;
    let attacker = tempfile::tempdir().unwrap();
    let marker = plant(attacker.path(), "date");
    let err = start_error(
        &client,
        json!({"argv": ["date"], "env": {"PATH": attacker.path()}}),
    )
    .await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(bad_fields(&err), ["params.env.PATH"]);
    assert!(!marker.exists(), "the planted date ran");
}

#[tokio::test]
async fn argv0_is_found_on_the_servers_path_even_where_clients_may_set_path() {
    let server = Reinsd::with_args(&["--allow-exec", "date", "--exec-allow-env", "PATH"]);
    let client = server.client().await;
    let attacker = tempfile::tempdir().unwrap();
    let marker = plant(attacker.path(), "date");
    let task = StartTask::new("exec").params(json!({
        "argv": ["date", "+%Y"],
        "env": {"PATH": attacker.path()},
    }));
    let task = run_to_end(&client, task).await;
    assert_eq!(task.state(), TaskState::Completed, "{task:?}");
    let stdout = &result_of(&task)["stdout_tail"];
    assert_ne!(stdout, &json!(["FAKE"]), "the planted date ran");
    assert!(!marker.exists(), "the planted date ran");
}

#[tokio::test]
async fn loader_and_interpreter_variables_are_refused_naming_the_field() {
    let server = Reinsd::with_args(&["--allow-exec", "sh", "--exec-allow-env", "LD_LIBRARY_PATH"]);
    let client = server.client().await;
    for name in [
        "LD_PRELOAD",
        "DYLD_INSERT_LIBRARIES",
        "BASH_ENV",
        "PYTHONPATH",
        "NODE_OPTIONS",
    ] {
        let err = start_error(
            &client,
            json!({"argv": ["sh", "-c", "true"], "env": {name: "/tmp/evil", "FINE": "1"}}),
        )
        .await;
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert_eq!(bad_fields(&err), [format!("params.env.{name}")]);
    }
    // The operator allowed this one by name.
    let task = StartTask::new("exec").params(json!({
        "argv": ["sh", "-c", "echo \"$LD_LIBRARY_PATH\""],
        "env": {"LD_LIBRARY_PATH": "/opt/lib"},
    }));
    let task = run_to_end(&client, task).await;
    assert_eq!(
        result_of(&task)["stdout_tail"],
        json!(["/opt/lib"]),
        "{task:?}"
    );
}

#[tokio::test]
async fn a_relative_allowlist_entry_stops_the_server_at_startup() {
    let said = refused_at_startup(&["--allow-exec", "./run.sh"], &[]);
    assert!(
        said.contains("./run.sh") && said.contains("relative path"),
        "{said}"
    );
}

#[tokio::test]
async fn a_relative_argv0_is_never_resolved_against_the_clients_cwd() {
    let operator = tempfile::tempdir().unwrap();
    let allowed = operator.path().join("run.sh");
    std::fs::write(&allowed, "#!/bin/sh\necho allowed\n").unwrap();
    std::fs::set_permissions(&allowed, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = Reinsd::with_args(&["--allow-exec", allowed.to_str().unwrap()]);
    let client = server.client().await;
    let attacker = tempfile::tempdir().unwrap();
    let marker = plant(attacker.path(), "run.sh");
    let err = start_error(
        &client,
        json!({"argv": ["./run.sh"], "cwd": attacker.path()}),
    )
    .await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(reason(&err), "EXEC_NOT_ALLOWED");
    assert!(!marker.exists(), "the planted script ran");

    let task = StartTask::new("exec").params(json!({"argv": [allowed], "cwd": attacker.path()}));
    let task = run_to_end(&client, task).await;
    assert_eq!(
        result_of(&task)["stdout_tail"],
        json!(["allowed"]),
        "{task:?}"
    );
}

/// The harness starts every server with `RUST_LOG` set (and with the test runner's own
/// environment): variables of the server that its tasks must not see unless passed through.
/// Prints `log=<RUST_LOG>` and then the names of every variable, on one line.
const SHOW_ENV: &str = "echo \"log=${RUST_LOG-unset}\"; env | sed 's/=.*//' | tr '\\n' ' '";

#[tokio::test]
async fn the_servers_environment_does_not_reach_the_program() {
    let server = exec_server();
    let client = server.client().await;
    let task = run_to_end(&client, sh(SHOW_ENV)).await;
    let stdout = result_of(&task)["stdout_tail"].clone();
    assert_eq!(stdout[0], "log=unset", "{stdout}");
    let names: Vec<&str> = stdout[1]
        .as_str()
        .expect("names")
        .split_whitespace()
        .collect();
    assert!(names.contains(&"PATH"), "{stdout}");
    // What the shell sets by itself is all there is besides PATH.
    let shell_own = ["PATH", "PWD", "OLDPWD", "SHLVL", "_"];
    assert!(
        names.iter().all(|name| shell_own.contains(name)),
        "the task saw more than PATH: {names:?}"
    );
}

#[tokio::test]
async fn the_operator_passes_server_variables_through_by_name() {
    let server = Reinsd::with_args(&["--allow-exec", "sh", "--exec-pass-env", "RUST_LOG"]);
    let client = server.client().await;
    let task = run_to_end(&client, sh(SHOW_ENV)).await;
    let stdout = &result_of(&task)["stdout_tail"];
    assert_eq!(stdout[0], "log=info,reins_server=debug", "{stdout}");
}

#[tokio::test]
async fn a_cwd_that_is_no_directory_is_invalid_argument() {
    let server = exec_server();
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    for cwd in [dir.path().join("missing"), file] {
        let err = start_error(&client, json!({"argv": ["sh", "-c", "true"], "cwd": cwd})).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{cwd:?}: {err:?}");
        assert_eq!(bad_fields(&err), ["params.cwd"]);
    }
}

#[tokio::test]
async fn the_operators_rlimits_bind_the_program() {
    let server = Reinsd::with_args(&["--allow-exec", "sh", "--exec-rlimit", "nofile=64,cpu=5s"]);
    let client = server.client().await;
    let task = run_to_end(&client, sh("ulimit -n; ulimit -Hn; ulimit -t")).await;
    assert_eq!(task.state(), TaskState::Completed, "{task:?}");
    assert_eq!(result_of(&task)["stdout_tail"], json!(["64", "64", "5"]));
}

#[tokio::test]
async fn a_program_over_its_cpu_limit_is_killed_by_sigxcpu() {
    let server = Reinsd::with_args(&["--allow-exec", "sh", "--exec-rlimit", "cpu=1"]);
    let client = server.client().await;
    let task = run_to_end(&client, sh("while :; do :; done")).await;
    assert_eq!(task.state(), TaskState::Failed, "{task:?}");
    assert_eq!(task.error, "killed by signal SIGXCPU");
}

#[tokio::test]
async fn a_bad_rlimit_stops_the_server_at_startup() {
    let said = refused_at_startup(&["--exec-rlimit", "nofile=lots"], &[]);
    assert!(said.contains("nofile=lots: not a whole number"), "{said}");
    let said = refused_at_startup(&["--exec-rlimit", "nproc=10"], &[]);
    assert!(said.contains("unknown limit \"nproc\""), "{said}");
}
