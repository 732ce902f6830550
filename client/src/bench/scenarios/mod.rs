//! The scenarios, one module each; [`run`] runs the one asked for and returns its rows.

pub mod backlog;
mod bulk_cancel;
mod cancel;
mod cancel_under_load;
mod capacity;
mod cost;
mod dispatch;
mod fanout;
mod lifecycle;
mod start;

use super::cli::Scenario;
use super::report::Report;
use super::{Bench, BenchResult};

pub async fn run(scenario: Scenario, bench: &Bench) -> BenchResult<Report> {
    match scenario {
        Scenario::Start => start::run(bench).await,
        Scenario::Dispatch => dispatch::run(bench).await,
        Scenario::Lifecycle => lifecycle::run(bench).await,
        Scenario::HardCancel => cancel::run(bench, cancel::Mode::Hard).await,
        Scenario::SoftCancel => cancel::run(bench, cancel::Mode::Soft).await,
        Scenario::WatchFanout => fanout::run(bench).await,
        Scenario::BulkCancel => bulk_cancel::run(bench).await,
        Scenario::Cost => cost::run(bench).await,
        Scenario::CancelUnderLoad => cancel_under_load::run(bench).await,
        Scenario::Capacity => capacity::run(bench).await,
        Scenario::Backlog => backlog::run(bench).await,
    }
}
