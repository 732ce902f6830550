//! `reins watch`: follows a task's event stream and shows it as a live progress bar on a
//! terminal, as one line per event otherwise, or as one JSON `TaskEvent` per line.

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
use tokio_stream::StreamExt;

use crate::{cli::WatchArgs, proto_json, render, run::CliError};

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

    /// Leaves the bar where it stopped, so the error printed after it has context.
    fn abandon(&self) {
        if let WatchOutput::Bar(bar) = self {
            bar.abandon();
        }
    }
}

pub async fn watch(client: &Client, args: &WatchArgs, json: bool) -> Result<ExitCode, CliError> {
    let mut events = client.watch(&args.id, args.options()).await?;
    let output = WatchOutput::new(json);
    // Created once, before the loop, so a Ctrl-C between two events is not lost.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut last_task = None;
    loop {
        let next = tokio::select! {
            next = events.next() => next,
            _ = &mut interrupted => {
                output.abandon();
                eprintln!("interrupted");
                return Ok(ExitCode::from(INTERRUPTED));
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
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            output.abandon();
            Err(CliError::WatchEndedEarly(args.id.clone()))
        }
    }
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
