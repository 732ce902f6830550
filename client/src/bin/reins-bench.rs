//! `reins-bench`: a load generator for a running Reins cluster. It drives one or more
//! replicas over gRPC through scenarios (StartTask latency, dispatch, short-task
//! throughput, cross-replica hard and soft cancels measured to the moment the code
//! stopped, alone and under load, 10,000-watcher fan-out, Redis cost, memory and CPU per
//! task, a large backlog) and prints count, p50/p90/p99/max and rate per measured
//! quantity. `client/bench/run.sh` sets up a local cluster and runs it.
//!
//! The modules live in `client/src/bench/`, outside the library: they are this tool's
//! internals, not part of the client API.

#[path = "../bench/mod.rs"]
mod bench;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = bench::Args::parse();
    match bench::run(args).await {
        Ok(outcome) => {
            print!("{}", outcome.report);
            if outcome.failed_scenarios == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
