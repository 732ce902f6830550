//! The `reins` command line: clap definitions, the parsers for labels and JSON parameters,
//! and the translation of arguments into client requests.

use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};
use reins_client::{
    StartTask, WatchOptions, json,
    proto::{CancelMode, CancelTasksRequest, ListActiveRequest},
};

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0    success
  1    the server rejected the request, could not be reached, or a watch broke off
  2    invalid arguments (including --params that is not a JSON object)
  130  `watch` or `run` interrupted with Ctrl-C";

const RUN_HELP: &str = "\
Start a task and follow it until it finishes, like `start` then `watch`, through RunTask: \
if this command goes away (killed, connection lost) the server soft-cancels the task, \
unless --continue-on-disconnect.

Ctrl-C soft-cancels the task and keeps showing its progress until it stops; a second \
Ctrl-C hard-cancels it. Exits 0 if the task COMPLETED, 1 if it FAILED or was CANCELLED \
(or the stream broke off), 130 if it was interrupted with Ctrl-C.";

const WATCH_HELP: &str = "\
Follow a task until it reaches a terminal state (COMPLETED, FAILED or CANCELLED).

On a terminal this shows a live progress bar, then the final task. When stdout is not a \
terminal it prints one line per change: `<version> <STATE> <fraction> <message>`; with \
--json, one TaskEvent per line.

Exits 0 once the task has finished, whichever terminal state it ended in: read the printed \
final state to tell success from failure. Exits 1 if the stream fails or ends before the \
task finished, 130 on Ctrl-C (which, with --cancel-on-disconnect, soft-cancels the task).";

/// Start, inspect, watch and cancel Reins tasks.
#[derive(Debug, Parser)]
#[command(name = "reins", version, after_help = EXIT_STATUS_HELP)]
pub struct Cli {
    /// Server address: `http://host:port`, `https://host:port` or `host:port` (TLS when
    /// --ca-cert or --cert is given).
    #[arg(
        long,
        global = true,
        env = "REINS_SERVER",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL"
    )]
    pub server: String,

    /// Bearer token sent with every call (a token of the server's auth config, or a JWT).
    #[arg(
        long,
        global = true,
        env = "REINS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// PEM CA certificate(s) that signed the server's certificate [default: the system's].
    #[arg(long, global = true, env = "REINS_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<std::path::PathBuf>,

    /// PEM client certificate for mutual TLS (with --key).
    #[arg(
        long,
        global = true,
        env = "REINS_CERT",
        value_name = "FILE",
        requires = "key"
    )]
    pub cert: Option<std::path::PathBuf>,

    /// PEM private key of --cert.
    #[arg(
        long,
        global = true,
        env = "REINS_KEY",
        value_name = "FILE",
        requires = "cert"
    )]
    pub key: Option<std::path::PathBuf>,

    /// Print the response as canonical proto3 JSON instead of a summary.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a task and print it.
    Start(StartArgs),
    #[command(about = "Start a task and follow it; Ctrl-C stops it", long_about = RUN_HELP)]
    Run(RunArgs),
    /// Show a task, active or finished.
    Check {
        /// Task id.
        id: String,
    },
    /// Cancel a task and its subtree (or every task of a session, label or kind): at the
    /// next checkpoint, or right away with --hard.
    Cancel(CancelArgs),
    /// List active (not yet finished) tasks, oldest first.
    List(ListArgs),
    #[command(about = "Follow a task until it finishes", long_about = WATCH_HELP)]
    Watch(WatchArgs),
    /// Answer the question of a task that is waiting for an answer.
    Answer {
        /// Task id.
        id: String,
        /// The answer.
        text: String,
    },
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Executor kind, e.g. `sleep` or `exec`.
    pub kind: String,
    /// Kind-specific parameters, a JSON object, e.g. '{"ms": 500}'.
    #[arg(long, value_name = "JSON", value_parser = parse_params)]
    pub params: Option<serde_json::Value>,
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Start the task as a child of this task.
    #[arg(long, value_name = "ID")]
    pub parent: Option<String>,
    /// Keep the child running when its parent finishes.
    #[arg(long, requires = "parent")]
    pub detached: bool,
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// A label, repeatable; for a repeated key the last value wins.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Maximum running time, e.g. `90s` or `5m`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Idempotency key: starting again with the same key returns the first task.
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
    /// A limit of the task's budget, repeatable: the server stops the task and its
    /// subtree once they have spent it, e.g. `--budget output_tokens=10000`.
    #[arg(long = "budget", value_name = "DIMENSION=LIMIT", value_parser = parse_budget)]
    pub budget: Vec<(String, f64)>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub start: StartArgs,
    /// Let the task run on if this command goes away before it finishes.
    #[arg(long)]
    pub continue_on_disconnect: bool,
}

impl StartArgs {
    pub fn into_start_task(self) -> StartTask {
        let mut task = StartTask::new(self.kind).detached(self.detached);
        if let Some(params) = self.params {
            // `parse_params` only lets objects through, so this cannot panic.
            task = task.params(params);
        }
        if let Some(description) = self.description {
            task = task.description(description);
        }
        if let Some(parent) = self.parent {
            task = task.parent(parent);
        }
        if let Some(session) = self.session {
            task = task.session(session);
        }
        if let Some(timeout) = self.timeout {
            task = task.timeout(timeout);
        }
        if let Some(request_id) = self.request_id {
            task = task.request_id(request_id);
        }
        for (dimension, limit) in self.budget {
            task = task.budget(dimension, limit);
        }
        self.labels
            .into_iter()
            .fold(task, |task, (key, value)| task.label(key, value))
    }
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).multiple(true).args(["id", "session", "labels", "kind"])))]
pub struct CancelArgs {
    /// Task id.
    #[arg(conflicts_with_all = ["session", "labels", "kind", "dry_run"])]
    pub id: Option<String>,
    /// Every active task of this session (which then refuses new tasks for a while).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Every active task with this label, repeatable (all must match).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Every active task of this kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only count the tasks that would be cancelled.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop the task now instead of at its next checkpoint.
    #[arg(long)]
    pub hard: bool,
    /// How long a soft cancel may take before the server hard-cancels the task
    /// [default: the server's grace period].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "hard")]
    pub grace: Option<Duration>,
    /// Why the task is cancelled, recorded on the task.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

impl CancelArgs {
    /// The CancelTasks request of a cancel by filter.
    pub fn bulk(&self) -> CancelTasksRequest {
        CancelTasksRequest {
            kind: self.kind.clone().unwrap_or_default(),
            session_id: self.session.clone().unwrap_or_default(),
            labels: self.labels.iter().cloned().collect(),
            mode: if self.hard {
                CancelMode::Hard
            } else {
                CancelMode::Soft
            } as i32,
            reason: self.reason.clone().unwrap_or_default(),
            grace_period: self.grace.map(reins_client::duration::to_proto),
            dry_run: self.dry_run,
            ..CancelTasksRequest::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub kind: Option<String>,
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Only direct children of this task.
    #[arg(long, value_name = "ID")]
    pub parent: Option<String>,
    /// Only tasks with this label, repeatable (all must match).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Tasks per page [default: the server's, 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub page_size: Option<i32>,
    /// Continue from the next-page token a previous `list` printed.
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
    /// Fetch every page instead of one.
    #[arg(long)]
    pub all: bool,
    /// Return the whole tasks (params, partial results, result), not the BASIC view.
    #[arg(long)]
    pub full: bool,
}

impl ListArgs {
    pub fn filter(&self) -> ListActiveRequest {
        ListActiveRequest {
            kind: self.kind.clone().unwrap_or_default(),
            session_id: self.session.clone().unwrap_or_default(),
            parent_id: self.parent.clone().unwrap_or_default(),
            labels: self.labels.iter().cloned().collect(),
            page_size: self.page_size.unwrap_or_default(),
            page_token: self.page_token.clone().unwrap_or_default(),
            view: if self.full {
                reins_proto::v1::TaskView::Full as i32
            } else {
                reins_proto::v1::TaskView::Unspecified as i32
            },
        }
    }
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Task id.
    pub id: String,
    /// Soft-cancel the task if this watch ends first (e.g. on Ctrl-C).
    #[arg(long)]
    pub cancel_on_disconnect: bool,
    /// Resume: show only the changes after this version.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub after_version: u64,
}

impl WatchArgs {
    pub fn options(&self) -> WatchOptions {
        WatchOptions {
            cancel_on_disconnect: self.cancel_on_disconnect,
            after_version: self.after_version,
            ..WatchOptions::default()
        }
    }
}

/// Parses `KEY=VALUE`; the value may be empty or contain `=`, the key may not be empty.
fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got `{text}`"))?;
    if key.is_empty() {
        return Err(format!("the label key is empty in `{text}`"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// Parses `DIMENSION=LIMIT` with a number as the limit (the server checks the rest).
fn parse_budget(text: &str) -> Result<(String, f64), String> {
    let (dimension, limit) = text
        .split_once('=')
        .ok_or_else(|| format!("expected DIMENSION=LIMIT, got `{text}`"))?;
    let limit: f64 = limit
        .parse()
        .map_err(|_| format!("the limit of `{dimension}` is not a number: `{limit}`"))?;
    Ok((dimension.to_owned(), limit))
}

/// Parses a JSON object; anything else is rejected here so the error is a usage error.
fn parse_params(text: &str) -> Result<serde_json::Value, String> {
    let params: serde_json::Value =
        serde_json::from_str(text).map_err(|err| format!("not valid JSON: {err}"))?;
    json::object_to_struct(&params).map_err(|err| err.to_string())?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::{CommandFactory, error::ErrorKind};
    use reins_client::proto::StartTaskRequest;
    use serde_json::json;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("reins").chain(args.iter().copied()))
    }

    fn parse_error(args: &[&str]) -> clap::Error {
        parse(args).expect_err("the arguments should be rejected")
    }

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn label_splits_at_the_first_equals_sign() {
        assert_eq!(parse_label("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_label("empty="), Ok(("empty".into(), String::new())));
    }

    #[test]
    fn label_without_equals_sign_is_rejected() {
        assert_eq!(
            parse_label("team"),
            Err("expected KEY=VALUE, got `team`".into())
        );
    }

    #[test]
    fn label_with_empty_key_is_rejected() {
        assert_eq!(
            parse_label("=x"),
            Err("the label key is empty in `=x`".into())
        );
    }

    #[test]
    fn bad_label_is_a_usage_error() {
        let err = parse_error(&["list", "--label", "oops"]);
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("expected KEY=VALUE"), "{err}");
    }

    #[test]
    fn params_must_be_valid_json() {
        let err = parse_error(&["start", "sleep", "--params", "{ms: 5}"]);
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("not valid JSON"), "{err}");
    }

    #[test]
    fn params_must_be_an_object() {
        let err = parse_error(&["start", "sleep", "--params", "[5]"]);
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string()
                .contains("expected a JSON object, got an array"),
            "{err}"
        );
    }

    #[test]
    fn durations_are_human_readable() {
        let Command::Cancel(args) = parse(&["cancel", "t1", "--grace", "1m 30s"])
            .unwrap()
            .command
        else {
            panic!("expected the cancel command");
        };
        assert_eq!(args.grace, Some(Duration::from_secs(90)));

        let Command::Start(args) = parse(&["start", "sleep", "--timeout", "500ms"])
            .unwrap()
            .command
        else {
            panic!("expected the start command");
        };
        assert_eq!(args.timeout, Some(Duration::from_millis(500)));
    }

    #[test]
    fn malformed_duration_is_a_usage_error() {
        let err = parse_error(&["start", "sleep", "--timeout", "soon"]);
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
    }

    #[test]
    fn grace_conflicts_with_hard() {
        let err = parse_error(&["cancel", "t1", "--hard", "--grace", "3s"]);
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn budgets_are_dimension_equals_number() {
        let Command::Start(args) = parse(&[
            "start",
            "sleep",
            "--budget",
            "output_tokens=10000",
            "--budget",
            "cost_usd=0.5",
        ])
        .unwrap()
        .command
        else {
            panic!("expected the start command");
        };
        assert_eq!(
            args.budget,
            [("output_tokens".into(), 10000.0), ("cost_usd".into(), 0.5)]
        );
        let err = parse_error(&["start", "sleep", "--budget", "tokens=many"]);
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
    }

    #[test]
    fn cancel_takes_an_id_or_filters() {
        let Command::Cancel(args) = parse(&[
            "cancel",
            "--session",
            "s1",
            "--label",
            "a=1",
            "--hard",
            "--dry-run",
        ])
        .unwrap()
        .command
        else {
            panic!("expected the cancel command");
        };
        assert_eq!(args.id, None);
        let request = args.bulk();
        assert_eq!(request.session_id, "s1");
        assert_eq!(request.labels["a"], "1");
        assert_eq!(request.mode, CancelMode::Hard as i32);
        assert!(request.dry_run);
        assert_eq!(
            parse_error(&["cancel"]).kind(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse_error(&["cancel", "t1", "--session", "s"]).kind(),
            ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn run_takes_the_start_arguments() {
        let Command::Run(args) = parse(&[
            "run",
            "sleep",
            "--params",
            r#"{"steps": 1, "step_ms": 1}"#,
            "--continue-on-disconnect",
        ])
        .unwrap()
        .command
        else {
            panic!("expected the run command");
        };
        assert!(args.continue_on_disconnect);
        assert_eq!(args.start.kind, "sleep");
    }

    #[test]
    fn detached_requires_a_parent() {
        let err = parse_error(&["start", "sleep", "--detached"]);
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn page_size_must_be_positive() {
        let err = parse_error(&["list", "--page-size", "0"]);
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = parse(&["check", "t1", "--json", "--server", "localhost:1"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.server, "localhost:1");
    }

    #[test]
    fn start_arguments_become_a_request() {
        let cli = parse(&[
            "start",
            "sleep",
            "--params",
            r#"{"ms": 250}"#,
            "--description",
            "nap",
            "--parent",
            "p1",
            "--detached",
            "--session",
            "s1",
            "--label",
            "team=infra",
            "--label",
            "tier=2",
            "--timeout",
            "2m",
            "--request-id",
            "r1",
        ])
        .unwrap();
        let Command::Start(args) = cli.command else {
            panic!("expected the start command");
        };
        let expected = StartTask::new("sleep")
            .params(json!({"ms": 250}))
            .description("nap")
            .parent("p1")
            .detached(true)
            .session("s1")
            .label("team", "infra")
            .label("tier", "2")
            .timeout(Duration::from_secs(120))
            .request_id("r1");
        assert_eq!(
            StartTaskRequest::from(args.into_start_task()),
            StartTaskRequest::from(expected)
        );
    }

    #[test]
    fn list_arguments_become_a_filter() {
        let Command::List(args) = parse(&[
            "list",
            "--kind",
            "exec",
            "--label",
            "a=1",
            "--page-size",
            "20",
            "--page-token",
            "next",
        ])
        .unwrap()
        .command
        else {
            panic!("expected the list command");
        };
        assert_eq!(
            args.filter(),
            ListActiveRequest {
                kind: "exec".into(),
                labels: HashMap::from([("a".into(), "1".into())]),
                page_size: 20,
                page_token: "next".into(),
                ..ListActiveRequest::default()
            }
        );
    }
}
