//! `reins`: the command-line client of the Reins task-control service.

mod cli;
mod proto_json;
mod render;
mod run;
mod watch;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Calls join the trace of $TRACEPARENT, if the caller gives one.
    let _trace = reins_client::propagation::join_environment_trace();
    match run::run(cli).await {
        Ok(code) => code,
        Err(err) if err.is_broken_pipe() => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
