//! `reins watch` and `reins run`: follow a task's event stream and show it as a live
//! progress bar on a terminal, as one line per event otherwise, or as one JSON `TaskEvent`
//! per line. On Ctrl-C, `watch` stops following; `run` soft-cancels the task and follows
//! it until it stops, and a second Ctrl-C hard-cancels it.

use std::{
    io::{self, IsTerminal, Write},
    process::ExitCode,
    time::Duration,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reins_client::{
    Client,
    proto::{Task, TaskEvent, TaskState},
};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use crate::{
    cli::{RunArgs, WatchArgs},
    proto_json, render,
    run::CliError,
};

/// The conventional exit status after SIGINT (128 + 2).
const INTERRUPTED: u8 = 130;
/// The bar counts in thousandths so fractions show smoothly.
const BAR_LENGTH: u64 = 1000;

/// Where and how watch events are shown.
enum WatchOutput {
    Bar(ProgressBar),
    Lines,
    Json,
}

impl WatchOutput {
    fn new(json: bool) -> WatchOutput {
        if json {
            WatchOutput::Json
        } else if io::stdout().is_terminal() {
            WatchOutput::Bar(new_bar())
        } else {
            WatchOutput::Lines
        }
    }

    fn show(&self, event: &TaskEvent) -> Result<(), CliError> {
        match (self, &event.task) {
            (WatchOutput::Json, _) => writeln!(io::stdout(), "{}", proto_json::to_json(event)?)?,
            (WatchOutput::Lines, Some(task)) => {
                writeln!(io::stdout(), "{}", render::watch_line(task))?
            }
            (WatchOutput::Bar(bar), Some(task)) => update_bar(bar, task),
            // An event without a task carries nothing to show in text form.
            (_, None) => {}
        }
        Ok(())
    }

    /// Clears the bar once the task finished, so the final summary replaces it.
    fn finish(&self, last: &Task) -> io::Result<()> {
        if let WatchOutput::Bar(bar) = self {
            bar.finish_and_clear();
            writeln!(io::stdout(), "{}", render::task_summary(last))?;
        }
        Ok(())
    }

    /// A line for the user (on stderr, above the bar), not part of the task's output.
    fn note(&self, text: &str) {
        match self {
            WatchOutput::Bar(bar) => bar.suspend(|| eprintln!("{text}")),
            _ => eprintln!("{text}"),
        }
    }

    /// Leaves the bar where it stopped, so the error printed after it has context.
    fn abandon(&self) {
        if let WatchOutput::Bar(bar) = self {
            bar.abandon();
        }
    }
}

pub async fn watch(client: &Client, args: &WatchArgs, json: bool) -> Result<ExitCode, CliError> {
    let events = client.watch(&args.id, args.options()).await?;
    match follow(events, json, None).await? {
        Followed::Interrupted => Ok(ExitCode::from(INTERRUPTED)),
        Followed::Finished(_) => Ok(ExitCode::SUCCESS),
        Followed::EndedEarly => Err(CliError::WatchEndedEarly(args.id.clone())),
    }
}

pub async fn run(client: &Client, args: RunArgs, json: bool) -> Result<ExitCode, CliError> {
    let events = client
        .run(args.start.into_start_task(), args.continue_on_disconnect)
        .await?;
    match follow(events, json, Some(client)).await? {
        Followed::Interrupted => Ok(ExitCode::from(INTERRUPTED)),
        Followed::Finished(TaskState::Completed) => Ok(ExitCode::SUCCESS),
        Followed::Finished(_) => Ok(ExitCode::FAILURE),
        Followed::EndedEarly => Err(CliError::RunEndedEarly),
    }
}

/// How following a task ended.
enum Followed {
    /// The stream reached the task's terminal version, in this state.
    Finished(TaskState),
    /// Ctrl-C (for `run`: the task stopped after it).
    Interrupted,
    EndedEarly,
}

/// Shows `events` until the task finishes. On Ctrl-C: without a `stopper`, stops at once;
/// with one, soft-cancels the task through it and goes on until the task stops, and a
/// second Ctrl-C hard-cancels it.
async fn follow(
    mut events: impl Stream<Item = Result<TaskEvent, Status>> + Unpin,
    json: bool,
    stopper: Option<&Client>,
) -> Result<Followed, CliError> {
    let output = WatchOutput::new(json);
    // Registered now and kept for the whole follow, so a Ctrl-C between two events, or
    // while a cancel is being sent, is not lost (a `ctrl_c()` future registers only when
    // first polled).
    let mut interrupted = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(CliError::Signal)?;
    let mut interrupts = 0;
    let mut last_task: Option<Task> = None;
    loop {
        let next = tokio::select! {
            next = events.next() => next,
            _ = interrupted.recv() => {
                interrupts += 1;
                let (Some(client), Some(task)) = (stopper, &last_task) else {
                    output.abandon();
                    eprintln!("interrupted");
                    return Ok(Followed::Interrupted);
                };
                if let Err(err) = stop(client, &task.id, interrupts, &output).await {
                    output.abandon();
                    return Err(err);
                }
                continue;
            }
        };
        match next {
            Some(Ok(event)) => {
                if let Err(err) = output.show(&event) {
                    output.abandon();
                    return Err(err);
                }
                last_task = event.task.or(last_task);
            }
            Some(Err(status)) => {
                output.abandon();
                return Err(status.into());
            }
            None => break,
        }
    }
    match last_task {
        Some(task) if task.state().is_terminal() => {
            output.finish(&task)?;
            Ok(if interrupts > 0 {
                Followed::Interrupted
            } else {
                Followed::Finished(task.state())
            })
        }
        _ => {
            output.abandon();
            Ok(Followed::EndedEarly)
        }
    }
}

/// The first Ctrl-C of a run soft-cancels its task, the next ones hard-cancel it.
async fn stop(
    client: &Client,
    id: &str,
    interrupts: usize,
    output: &WatchOutput,
) -> Result<(), CliError> {
    const REASON: &str = "interrupted (Ctrl-C)";
    if interrupts == 1 {
        output.note("soft-cancelling the task; Ctrl-C again to stop it now");
        client.soft_cancel(id, REASON, None).await?;
    } else {
        output.note("hard-cancelling the task");
        client.hard_cancel(id, REASON).await?;
    }
    Ok(())
}

fn new_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(BAR_LENGTH), ProgressDrawTarget::stdout());
    let style =
        ProgressStyle::with_template("{spinner} {prefix:<18} [{bar:30}] {percent:>3}% {wide_msg}")
            .expect("the progress bar template is valid")
            .progress_chars("=> ");
    bar.set_style(style);
    // Keeps the spinner turning while the task makes no progress, so the watch looks alive.
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn update_bar(bar: &ProgressBar, task: &Task) {
    bar.set_prefix(render::state_name(task.state));
    let (fraction, message) = task.progress.as_ref().map_or((0.0, ""), |progress| {
        (progress.fraction, progress.message.as_str())
    });
    bar.set_position((fraction.clamp(0.0, 1.0) * BAR_LENGTH as f64).round() as u64);
    // While the task waits, its question is what the user needs to see.
    if task.state() == TaskState::WaitingForAnswer {
        bar.set_message(format!("question: {}", task.question));
    } else {
        bar.set_message(message.to_owned());
    }
}
