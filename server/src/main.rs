//! `reinsd`: parses flags, sets up logging, binds the listener and runs the server until
//! SIGTERM or SIGINT. The same binary, re-executed by the server, is the subreaper of one
//! exec task (`executor::exec::subreaper`).

use std::io::{IsTerminal, Write};

use clap::{CommandFactory, Parser};
use reins_server::config::{Config, LogFormat};
use reins_server::telemetry::traces::Traces;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets, filter_fn};
use tracing_subscriber::prelude::*;

fn main() -> std::process::ExitCode {
    // First: a subreaper is a small synchronous process and must not start a runtime.
    reins_server::run_exec_subreaper_if_invoked();
    server_main()
}

#[tokio::main]
async fn server_main() -> std::process::ExitCode {
    let config = Config::parse();
    if let Err(why) = config.check() {
        Config::command()
            .error(clap::error::ErrorKind::ArgumentConflict, why)
            .exit();
    }
    let traces = init_logging(config.log_format, &config.replica_id());
    let code = match serve(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "reinsd failed");
            std::process::ExitCode::FAILURE
        }
    };
    // Exports the spans still queued; the exporter's channel needs the runtime running.
    let _ = tokio::task::spawn_blocking(move || traces.shut_down()).await;
    code
}

async fn serve(config: Config) -> Result<(), reins_server::server::BoxError> {
    let listener = TcpListener::bind(config.listen).await?;
    let address = listener.local_addr()?;
    // One machine-readable line on stdout, so scripts and tests can find a port-0 server.
    println!("reinsd listening on {address}");
    std::io::stdout().flush()?;
    tracing::info!(%address, replica = %config.replica_id(), "serving");
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    reins_server::server::run(config, listener, shutdown).await
}

/// The log on stderr (`RUST_LOG`, default `info`; events only, so log lines look the same
/// with traces on or off) and, when the environment asks for them, the traces of the
/// server's spans (`telemetry::traces`), whatever `RUST_LOG` says.
fn init_logging(format: LogFormat, replica_id: &str) -> Traces {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = filter.and(only(|metadata| metadata.is_event()));
    // Colours only for a person at a terminal: log collectors store escape codes verbatim.
    let log = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let log = match format {
        LogFormat::Json => log.json().with_filter(filter).boxed(),
        LogFormat::Text => log.with_filter(filter).boxed(),
    };
    let (traces, spans) = match Traces::from_env(replica_id) {
        Ok(traces) => traces,
        Err(err) => {
            eprintln!("reinsd: traces are off: {err}");
            (Traces::off(), None)
        }
    };
    // Only the server's spans: its log events stay in the log rather than being copied
    // into every span they happen in (the execution span records its events itself).
    let spans = spans.map(|layer| {
        let ours = Targets::new().with_target("reins_server", tracing::Level::INFO);
        layer.with_filter(ours.and(only(|metadata| metadata.is_span())))
    });
    tracing_subscriber::registry().with(log).with(spans).init();
    traces
}

/// A filter on the kind of callsite, not its level. It says so (the most verbose level as
/// its hint): without a hint, the filter it is combined with would lose its own, and every
/// `trace!` of every dependency (h2 has one per frame) would be asked about at run time.
fn only(
    kind: fn(&tracing::Metadata<'_>) -> bool,
) -> tracing_subscriber::filter::FilterFn<fn(&tracing::Metadata<'_>) -> bool> {
    filter_fn(kind).with_max_level_hint(LevelFilter::TRACE)
}
