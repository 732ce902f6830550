//! `exec`: runs an operator-allowed program as a task, in a tree it cannot escape.
//!
//! Params: `argv` (non-empty list of strings), optional `env` (object of strings) and `cwd`
//! (an existing directory, absolute path). What the operator decides, once at startup
//! ([`ExecPolicy`]):
//!
//! - **Which programs** ([`program`]): `argv[0]` is resolved on the server's `PATH`, never
//!   the client's, and must be the same file as an `--allow-exec` entry, or the task is
//!   PERMISSION_DENIED (`EXEC_NOT_ALLOWED`).
//! - **Which environment** ([`env`]): a minimal one, not the server's: `PATH`, the
//!   variables the operator passes through, and the client's `env` minus loader and
//!   interpreter-hijack names (INVALID_ARGUMENT naming `params.env.<NAME>`).
//! - **Which limits** ([`rlimit`]): `--exec-rlimit`, set in the program's process.
//!
//! Each task runs under a [`subreaper`] process of its own (`PR_SET_CHILD_SUBREAPER`), so
//! that every descendant stays below it even after `setsid` or a double fork:
//!
//! - A soft cancel sends SIGTERM to the program's process group; whatever the program does
//!   then (exit 0, exit 143, …) ends the task CANCELLED.
//! - A hard cancel or escalation drops the job: the program's group gets SIGKILL at once,
//!   and the subreaper kills and reaps every other descendant, then exits.
//! - When the program exits, whatever is left below it is killed the same way: a task
//!   leaves nothing running behind it. So does a `reinsd` that dies, even by SIGKILL.
//! - Exit 0 → COMPLETED; non-zero or killed by a signal → FAILED with the status in `error`.
//!   The result carries `exit_code`, `signal` and the last lines of stdout and stderr
//!   ([`output`], which also reads the `::progress::` / `::checkpoint::` / `::usage::`
//!   convention).
//!
//! Why a subreaper process per task rather than `reinsd` itself as the subreaper: orphans
//! of every task would then reparent to `reinsd` and lose the link to the task that made
//! them, and the `waitpid(-1)` needed to reap them would steal exit statuses from tokio's
//! own child handling. A cgroup v2 (`cgroup.kill`) would also bound whole tasks' CPU and memory, but
//! needs a delegated, writable cgroup tree, which most containers and plain service units
//! do not have; the subreaper works unprivileged everywhere on Linux (3.4+), so it is the
//! one mechanism, used in every deployment.

mod env;
mod output;
mod process_tree;
mod program;
mod rlimit;
pub mod subreaper;

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;

use futures_util::future::BoxFuture;
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

pub use self::env::{EnvName, EnvPolicy};
use self::output::{StdoutLine, Tail, next_line, parse_stdout_line};
use self::program::Unresolved;
pub use self::program::{AllowedProgram, SearchPath};
pub use self::rlimit::Rlimits;
use self::subreaper::Subreaper;
use super::params::Params;
use super::{Job, Kind, Outcome, TaskContext};
use crate::error::{Error, Result};
use crate::task::JsonMap;

/// Client-chosen text echoed in an error is cut to this many characters.
const ECHO_CHARS: usize = 100;

/// The operator's exec settings, fixed at startup: `--allow-exec`, `--exec-pass-env`,
/// `--exec-allow-env`, `--exec-rlimit`.
#[derive(Clone, Debug)]
pub struct ExecPolicy {
    /// Empty: exec is off.
    pub allowlist: Vec<AllowedProgram>,
    /// Where `argv[0]` is looked up: the server's `PATH`.
    pub search_path: SearchPath,
    pub env: EnvPolicy,
    pub rlimits: Rlimits,
}

pub struct Exec {
    policy: ExecPolicy,
}

impl Exec {
    pub fn new(policy: ExecPolicy) -> Exec {
        Exec { policy }
    }

    /// The file `argv0` runs, if the allowlist has it.
    fn allowed(&self, argv0: &str) -> Result<PathBuf> {
        let not_allowed = || {
            Error::ExecNotAllowed(format!(
                "program {:?} is not on this server's exec allowlist (reinsd --allow-exec PROGRAM)",
                echo(argv0)
            ))
        };
        match program::resolve(argv0, &self.policy.search_path) {
            Ok(path) if self.policy.allowlist.iter().any(|entry| entry.path == path) => Ok(path),
            Err(Unresolved::Relative) => Err(Error::ExecNotAllowed(format!(
                "program {:?}: {}",
                echo(argv0),
                Unresolved::Relative
            ))),
            // Whether a program exists on the server is no business of a client's.
            _ => Err(not_allowed()),
        }
    }
}

fn echo(text: &str) -> String {
    text.chars().take(ECHO_CHARS).collect()
}

/// `cwd` as a working directory: an absolute path to an existing directory.
fn checked_cwd(cwd: String) -> Result<PathBuf> {
    let path = PathBuf::from(cwd);
    let problem = if !path.is_absolute() {
        "must be an absolute path"
    } else if !path.exists() {
        "no such directory on the server"
    } else if !path.is_dir() {
        "not a directory"
    } else {
        return Ok(path);
    };
    Err(Error::invalid("params.cwd", problem))
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
        for (name, why) in self.policy.env.refused(&env) {
            p.reject(&format!("env.{}", echo(&name)), why);
        }
        p.finish()?;
        let argv = argv.unwrap_or_default();
        let program = self.allowed(&argv[0])?;
        // After the allowlist, so that a client that may run nothing cannot probe the
        // server's directories.
        let cwd = cwd.map(checked_cwd).transpose()?;
        Ok(Box::new(ExecJob {
            launch: Launch {
                program,
                env: self.policy.env.task_env(&env),
                argv,
                cwd,
                rlimits: self.policy.rlimits.clone(),
            },
        }))
    }
}

/// What one task runs: everything is decided (and checked) before; the subreaper only
/// carries it out.
#[derive(Clone, Debug)]
struct Launch {
    /// The program's resolved absolute path.
    program: PathBuf,
    /// `argv[0]` as the client gave it (multi-call programs pick their behaviour by it),
    /// then the arguments.
    argv: Vec<String>,
    /// The program's whole environment.
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    rlimits: Rlimits,
}

struct ExecJob {
    launch: Launch,
}

impl Job for ExecJob {
    fn run(self: Box<Self>, ctx: TaskContext) -> BoxFuture<'static, Outcome> {
        Box::pin(self.exec(ctx))
    }
}

impl ExecJob {
    async fn exec(self, ctx: TaskContext) -> Outcome {
        let cannot_start = |why: String| Outcome::Failed {
            error: format!("cannot start {:?}: {why}", echo(&self.launch.argv[0])),
            result: None,
        };
        let (mut child, mut subreaper) = match Subreaper::spawn(&self.launch) {
            Ok(spawned) => spawned,
            Err(err) => return cannot_start(err.to_string()),
        };
        if let Err(why) = subreaper.started().await {
            return cannot_start(why);
        }
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
                    StdoutLine::Usage(usage) => {
                        let _ = ctx.report_progress(progress.0, progress.1.clone(), None, usage).await;
                    }
                    StdoutLine::BadUsage(why) => {
                        tracing::warn!(task = %ctx.current().id, %why, "an exec ::usage:: line ignored");
                    }
                    StdoutLine::Checkpoint(value) => {
                        let _ = ctx.checkpoint(value, progress.0, progress.1.clone()).await;
                    }
                    StdoutLine::Output(line) => stdout_tail.push(line),
                },
                Some(line) = next_line(&mut stderr) => stderr_tail.push(line),
                // The subreaper exits as its program did, once nothing is left below it
                // (which also closes the pipes descendants may have held open).
                exit = child.wait(), if status.is_none() => {
                    subreaper.exited();
                    status = Some(exit.unwrap_or_else(|_| ExitStatus::from_raw(0)));
                }
                () = ctx.cancel_requested(), if !terminated && status.is_none() => {
                    subreaper.signal_program(Signal::SIGTERM);
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
            "stdout_tail": stdout_tail.into_lines(),
            "stderr_tail": stderr_tail.into_lines(),
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
    use serde_json::json;

    use super::*;
    use crate::error::FieldViolation;
    use crate::task::Json;

    fn policy(allow: &[&str], client_may_set: &[&str]) -> ExecPolicy {
        let search_path = SearchPath::of_server();
        let allowed: Vec<EnvName> = client_may_set.iter().map(|s| s.parse().unwrap()).collect();
        ExecPolicy {
            allowlist: allow.iter().map(|entry| entry.parse().unwrap()).collect(),
            env: EnvPolicy::new(&search_path, &[], &allowed),
            search_path,
            rlimits: Rlimits::default(),
        }
    }

    fn prepare(params: Json) -> Result<Box<dyn Job>> {
        Exec::new(policy(&["sh"], &[])).prepare(params.as_object().unwrap())
    }

    fn bad_fields(result: Result<Box<dyn Job>>) -> Vec<String> {
        match result {
            Err(Error::InvalidArgument(violations)) => violations
                .into_iter()
                .map(|FieldViolation { field, .. }| field)
                .collect(),
            Err(other) => panic!("expected INVALID_ARGUMENT, got {other:?}"),
            Ok(_) => panic!("expected INVALID_ARGUMENT, got a job"),
        }
    }

    #[test]
    fn only_allowlisted_programs_run() {
        assert!(prepare(json!({"argv": ["sh", "-c", "true"]})).is_ok());
        assert!(matches!(
            prepare(json!({"argv": ["rm", "-rf", "/"]})),
            Err(Error::ExecNotAllowed(_))
        ));
        let nothing_allowed = Exec::new(policy(&[], &[]));
        assert!(matches!(
            nothing_allowed.prepare(json!({"argv": ["sh"]}).as_object().unwrap()),
            Err(Error::ExecNotAllowed(_))
        ));
    }

    #[test]
    fn the_allowlist_compares_resolved_paths() {
        let sh = program::resolve("sh", &SearchPath::of_server()).unwrap();
        assert!(
            prepare(json!({"argv": [sh]})).is_ok(),
            "{} is the entry `sh`",
            sh.display()
        );
        let err = prepare(json!({"argv": ["./sh"]})).err().unwrap();
        assert!(
            matches!(&err, Error::ExecNotAllowed(message) if message.contains("relative")),
            "{err:?}"
        );
        assert!(matches!(
            prepare(json!({"argv": ["/nonexistent/sh"]})),
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
            json!({"argv": ["rm"], "env": {"LD_PRELOAD": "/tmp/x.so"}}),
        ] {
            assert!(
                matches!(prepare(params.clone()), Err(Error::InvalidArgument(_))),
                "{params}"
            );
        }
    }

    #[test]
    fn refused_env_names_are_named_one_by_one() {
        let params = json!({
            "argv": ["sh"],
            "env": {"LD_PRELOAD": "/tmp/x.so", "PATH": "/tmp", "GREETING": "hi"},
        });
        assert_eq!(
            bad_fields(prepare(params.clone())),
            ["params.env.LD_PRELOAD", "params.env.PATH"]
        );
        let lenient = Exec::new(policy(&["sh"], &["LD_PRELOAD", "PATH"]));
        assert!(lenient.prepare(params.as_object().unwrap()).is_ok());
    }

    #[test]
    fn cwd_must_be_an_existing_directory_given_absolutely() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        for cwd in [
            json!("relative/dir"),
            json!(dir.path().join("missing")),
            json!(file),
        ] {
            assert_eq!(
                bad_fields(prepare(json!({"argv": ["sh"], "cwd": cwd}))),
                ["params.cwd"],
                "{cwd}"
            );
        }
        assert!(prepare(json!({"argv": ["sh"], "cwd": dir.path()})).is_ok());
        // A client that may not run the program learns nothing about the directory.
        assert!(matches!(
            prepare(json!({"argv": ["rm"], "cwd": dir.path().join("missing")})),
            Err(Error::ExecNotAllowed(_))
        ));
    }
}
