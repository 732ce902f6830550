//! `exec`: runs a program in its own process group.
//!
//! Params: `argv` (non-empty list of strings; `argv[0]` must be on the operator's
//! `--allow-exec` list, otherwise PERMISSION_DENIED), optional `env` (object of strings,
//! added to the server's environment) and `cwd`.
//!
//! - A soft cancel sends SIGTERM to the group; whatever the program does then (exit 0,
//!   exit 143, …) ends the task CANCELLED. A hard cancel or escalation drops the job, which
//!   sends SIGKILL to the group, children included.
//! - Exit 0 → COMPLETED; non-zero or killed by a signal → FAILED with the status in `error`.
//!   The result carries `exit_code`, `signal` and the last lines of stdout and stderr.
//! - When the program's main process exits, what is left of its group is killed: a task
//!   leaves nothing running behind it.
//!
//! Stdout convention (like CI workflow commands): a line `::progress:: 0.4 fetching pages`
//! reports progress (fraction, then an optional message) and a line
//! `::checkpoint:: {"pages": 12}` appends a partial result (JSON, or the raw text if it is
//! not JSON). Every other line is ordinary output.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};

use futures_util::future::BoxFuture;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::Command;

use super::params::Params;
use super::{Job, Kind, Outcome, TaskContext};
use crate::error::{Error, Result};
use crate::task::{Json, JsonMap};

/// Lines of stdout and of stderr kept for the result.
const TAIL_LINES: usize = 20;
/// Longer output lines are cut to this many characters in the result.
const MAX_LINE_CHARS: usize = 1000;

pub struct Exec {
    allowlist: Vec<String>,
}

impl Exec {
    pub fn new(allowlist: Vec<String>) -> Exec {
        Exec { allowlist }
    }
}

impl Kind for Exec {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn prepare(&self, params: &JsonMap) -> Result<Box<dyn Job>> {
        let mut p = Params::new(params);
        let argv = p.required_strings("argv");
        let env = p.string_map("env").unwrap_or_default();
        let cwd = p.string("cwd");
        p.finish()?;
        let argv = argv.unwrap_or_default();
        if !self.allowlist.contains(&argv[0]) {
            return Err(Error::ExecNotAllowed(format!(
                "program {:?} is not on this server's exec allowlist (reinsd --allow-exec PROGRAM)",
                argv[0]
            )));
        }
        Ok(Box::new(ExecJob { argv, env, cwd }))
    }
}

struct ExecJob {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<String>,
}

impl Job for ExecJob {
    fn run(self: Box<Self>, ctx: TaskContext) -> BoxFuture<'static, Outcome> {
        Box::pin(self.exec(ctx))
    }
}

/// Owns a process group: dropping it (the job finished, or was dropped by a hard cancel)
/// kills whatever is left of the group.
/// `None` if the process had no pid to take (it cannot be signalled, and must never become
/// `killpg(0)`, which would signal the server's own group).
struct ProcessGroup(Option<Pid>);

impl ProcessGroup {
    fn signal(&self, signal: Signal) {
        if let Some(pgid) = self.0 {
            // ESRCH (nothing left in the group) is the normal case after an exit.
            let _ = killpg(pgid, signal);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// One stdout line, read by the convention in the module docs.
#[derive(Debug, PartialEq)]
enum StdoutLine {
    Progress { fraction: f64, message: String },
    Checkpoint(Json),
    Output(String),
}

fn parse_stdout_line(line: &str) -> StdoutLine {
    if let Some(rest) = line.strip_prefix("::progress::") {
        let rest = rest.trim();
        let (number, message) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        if let Ok(fraction) = number.parse::<f64>()
            && fraction.is_finite()
        {
            return StdoutLine::Progress {
                fraction,
                message: message.trim().to_owned(),
            };
        }
    } else if let Some(rest) = line.strip_prefix("::checkpoint::") {
        let rest = rest.trim();
        return StdoutLine::Checkpoint(serde_json::from_str(rest).unwrap_or_else(|_| json!(rest)));
    }
    StdoutLine::Output(line.to_owned())
}

#[derive(Default)]
struct Tail(VecDeque<String>);

impl Tail {
    fn push(&mut self, line: String) {
        if self.0.len() == TAIL_LINES {
            self.0.pop_front();
        }
        self.0
            .push_back(line.chars().take(MAX_LINE_CHARS).collect());
    }
}

/// Reads lines until EOF; `None` once the pipe is closed (or unreadable).
async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut Option<Lines<R>>,
) -> Option<String> {
    let reader = lines.as_mut()?;
    match reader.next_line().await {
        Ok(Some(line)) => Some(line),
        _ => {
            *lines = None;
            None
        }
    }
}

impl ExecJob {
    async fn exec(self, ctx: TaskContext) -> Outcome {
        let mut command = Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => {
                return Outcome::Failed {
                    error: format!("cannot start {:?}: {err}", self.argv[0]),
                    result: None,
                };
            }
        };
        let group = ProcessGroup(
            child
                .id()
                .and_then(|pid| i32::try_from(pid).ok())
                .map(Pid::from_raw),
        );
        let mut stdout = child.stdout.take().map(|out| BufReader::new(out).lines());
        let mut stderr = child.stderr.take().map(|err| BufReader::new(err).lines());
        let (mut stdout_tail, mut stderr_tail) = (Tail::default(), Tail::default());
        let mut progress = (0.0, String::new());
        let mut status: Option<ExitStatus> = None;
        let mut terminated = false;

        while status.is_none() || stdout.is_some() || stderr.is_some() {
            tokio::select! {
                Some(line) = next_line(&mut stdout) => match parse_stdout_line(&line) {
                    StdoutLine::Progress { fraction, message } => {
                        progress = (fraction, message);
                        let _ = ctx.progress(progress.0, progress.1.clone()).await;
                    }
                    StdoutLine::Checkpoint(value) => {
                        let _ = ctx.checkpoint(value, progress.0, progress.1.clone()).await;
                    }
                    StdoutLine::Output(line) => stdout_tail.push(line),
                },
                Some(line) = next_line(&mut stderr) => stderr_tail.push(line),
                exit = child.wait(), if status.is_none() => {
                    // The main process is gone: nothing else of the task may live on, and
                    // killing the rest closes the pipes they may hold open.
                    group.signal(Signal::SIGKILL);
                    status = Some(exit.unwrap_or_else(|_| ExitStatus::from_raw(0)));
                }
                () = ctx.cancel_requested(), if !terminated && status.is_none() => {
                    group.signal(Signal::SIGTERM);
                    terminated = true;
                }
                // A pipe reached EOF in this round (its reader is now `None`): look again.
                else => {}
            }
        }
        let status = status.expect("the loop ends only after the exit");
        let result = json!({
            "exit_code": status.code(),
            "signal": status.signal().and_then(|s| Signal::try_from(s).ok()).map(|s| s.as_str()),
            "stdout_tail": stdout_tail.0,
            "stderr_tail": stderr_tail.0,
        });
        if terminated {
            Outcome::Stopped(result)
        } else if status.success() {
            Outcome::Completed(result)
        } else {
            let error = match (status.code(), status.signal()) {
                (Some(code), _) => format!("exit code {code}"),
                (None, Some(signal)) => format!(
                    "killed by signal {}",
                    Signal::try_from(signal)
                        .map_or_else(|_| signal.to_string(), |s| s.as_str().to_owned())
                ),
                (None, None) => "ended with an unknown status".to_owned(),
            };
            Outcome::Failed {
                error,
                result: Some(result),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Exec {
        Exec::new(vec!["sh".into()])
    }

    fn prepare(params: Json) -> Result<Box<dyn Job>> {
        exec().prepare(params.as_object().unwrap())
    }

    #[test]
    fn only_allowlisted_programs_run() {
        assert!(prepare(json!({"argv": ["sh", "-c", "true"]})).is_ok());
        assert!(matches!(
            prepare(json!({"argv": ["rm", "-rf", "/"]})),
            Err(Error::ExecNotAllowed(_))
        ));
        // The allowlist compares argv[0] exactly: a path to the same program is another entry.
        assert!(matches!(
            prepare(json!({"argv": ["/bin/sh"]})),
            Err(Error::ExecNotAllowed(_))
        ));
        let nothing_allowed = Exec::new(Vec::new());
        assert!(matches!(
            nothing_allowed.prepare(json!({"argv": ["sh"]}).as_object().unwrap()),
            Err(Error::ExecNotAllowed(_))
        ));
    }

    #[test]
    fn bad_params_are_invalid_before_the_allowlist_is_checked() {
        for params in [
            json!({}),
            json!({"argv": []}),
            json!({"argv": "sh"}),
            json!({"argv": ["sh"], "env": {"A": 1}}),
        ] {
            assert!(
                matches!(prepare(params.clone()), Err(Error::InvalidArgument(_))),
                "{params}"
            );
        }
    }

    #[test]
    fn stdout_lines_follow_the_progress_and_checkpoint_convention() {
        assert_eq!(
            parse_stdout_line("::progress:: 0.25 fetching pages"),
            StdoutLine::Progress {
                fraction: 0.25,
                message: "fetching pages".into()
            }
        );
        assert_eq!(
            parse_stdout_line("::progress::1"),
            StdoutLine::Progress {
                fraction: 1.0,
                message: String::new()
            }
        );
        assert_eq!(
            parse_stdout_line("::checkpoint:: {\"rows\": 3}"),
            StdoutLine::Checkpoint(json!({"rows": 3}))
        );
        assert_eq!(
            parse_stdout_line("::checkpoint:: rows 3"),
            StdoutLine::Checkpoint(json!("rows 3"))
        );
        assert_eq!(
            parse_stdout_line("::progress:: soon"),
            StdoutLine::Output("::progress:: soon".into())
        );
        assert_eq!(
            parse_stdout_line("hello"),
            StdoutLine::Output("hello".into())
        );
    }

    #[test]
    fn the_tail_keeps_the_last_lines_cut_to_length() {
        let mut tail = Tail::default();
        for i in 0..(TAIL_LINES + 5) {
            tail.push(format!("{i}"));
        }
        assert_eq!(tail.0.len(), TAIL_LINES);
        assert_eq!(tail.0.front().unwrap(), "5");
        tail.push("x".repeat(MAX_LINE_CHARS * 2));
        assert_eq!(tail.0.back().unwrap().len(), MAX_LINE_CHARS);
    }
}
