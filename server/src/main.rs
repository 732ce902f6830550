//! `reinsd`: parses flags, sets up logging, binds the listener and runs the server until
//! SIGTERM or SIGINT. The same binary, re-executed by the server, is the subreaper of one
//! exec task (`executor::exec::subreaper`).

use std::io::{IsTerminal, Write};

use clap::{CommandFactory, Parser};
use reins_server::config::{Config, LogFormat};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

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
    init_logging(config.log_format);
    match serve(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "reinsd failed");
            std::process::ExitCode::FAILURE
        }
    }
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

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: log collectors store escape codes verbatim.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
