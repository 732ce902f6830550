//! `reinsd` flags. Every flag can also be set by an environment variable `REINS_…`;
//! durations take the usual human form (`500ms`, `3s`, `2m`, `24h`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::task::MAX_DURATION;

/// A human duration (`500ms`, `3s`) no longer than the service's [`MAX_DURATION`].
fn duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|err| err.to_string())?;
    if duration > MAX_DURATION {
        return Err("must be at most 10,000 years".to_owned());
    }
    Ok(duration)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "reinsd",
    version,
    about = "Reins task-control server: start long-running work and reliably stop it."
)]
pub struct Config {
    /// Address to serve gRPC on. Port 0 picks a free port; the address is printed on stdout.
    #[arg(long, env = "REINS_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// This replica's id, recorded as the `owner` of the tasks it runs. Default: the hostname.
    #[arg(long, env = "REINS_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// Program the `exec` kind may run (compared with argv[0] exactly). Repeatable; the
    /// environment variable takes a comma-separated list. Empty: `exec` is off.
    #[arg(
        long = "allow-exec",
        env = "REINS_ALLOW_EXEC",
        value_name = "PROGRAM",
        value_delimiter = ','
    )]
    pub allow_exec: Vec<String>,

    /// A task kind served by workers (WorkerService), accepted by StartTask even before a
    /// worker for it has connected; such tasks wait PENDING until one does. Repeatable.
    /// Kinds served by a connected worker are accepted anyway.
    #[arg(
        long = "worker-kind",
        env = "REINS_WORKER_KINDS",
        value_name = "KIND",
        value_delimiter = ','
    )]
    pub worker_kinds: Vec<String>,

    /// Grace period of a soft cancel that does not name one, and of timeouts.
    #[arg(long, env = "REINS_DEFAULT_GRACE", default_value = "30s", value_parser = duration)]
    pub default_grace: Duration,

    /// How long finished tasks stay readable.
    #[arg(long, env = "REINS_RETENTION", default_value = "24h", value_parser = duration)]
    pub retention: Duration,

    /// On SIGTERM/SIGINT, how long running tasks may take to finish before they are soft-
    /// and then hard-cancelled.
    #[arg(long, env = "REINS_SHUTDOWN_GRACE", default_value = "30s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// Redis holding the shared state of every replica, e.g. `redis://127.0.0.1:6379`.
    /// Unset: the embedded in-memory store (a single replica).
    #[arg(long, env = "REINS_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel, so deployments can share a Redis.
    #[arg(long, env = "REINS_REDIS_PREFIX", default_value = "reins:")]
    pub redis_prefix: String,

    /// How long a replica's lease lives without renewal (renewed every third of it). A
    /// replica that stops renewing has its tasks settled by the others within about this.
    #[arg(long, env = "REINS_LEASE_TTL", default_value = "10s", value_parser = duration)]
    pub lease_ttl: Duration,

    /// Tasks this replica runs at once; more wait PENDING, oldest first.
    #[arg(long, env = "REINS_MAX_CONCURRENCY", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrency: u32,

    /// Largest gRPC message accepted or sent, in bytes; larger ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "REINS_MAX_MESSAGE_SIZE", default_value_t = 4 * 1024 * 1024)]
    pub max_message_size: usize,

    #[arg(long, env = "REINS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    pub fn replica_id(&self) -> String {
        self.replica_id
            .clone()
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let config = Config::try_parse_from(["reinsd"]).unwrap();
        assert_eq!(config.listen, "0.0.0.0:50051".parse().unwrap());
        assert_eq!(config.default_grace, Duration::from_secs(30));
        assert_eq!(config.retention, Duration::from_secs(24 * 3600));
        assert_eq!(config.shutdown_grace, Duration::from_secs(30));
        assert!(config.allow_exec.is_empty());
        assert_eq!(config.redis_url, None);
        assert_eq!(config.redis_prefix, "reins:");
        assert_eq!(config.lease_ttl, Duration::from_secs(10));
        assert!(!config.replica_id().is_empty());
    }

    #[test]
    fn human_durations_and_repeated_allowlist_entries() {
        let config = Config::try_parse_from([
            "reinsd",
            "--default-grace",
            "500ms",
            "--retention",
            "2m",
            "--allow-exec",
            "sh",
            "--allow-exec",
            "python3",
        ])
        .unwrap();
        assert_eq!(config.default_grace, Duration::from_millis(500));
        assert_eq!(config.retention, Duration::from_secs(120));
        assert_eq!(config.allow_exec, ["sh", "python3"]);
    }

    #[test]
    fn durations_beyond_the_protobuf_range_are_refused() {
        assert!(Config::try_parse_from(["reinsd", "--default-grace", "20000years"]).is_err());
    }

    #[test]
    fn zero_concurrency_is_refused() {
        assert!(Config::try_parse_from(["reinsd", "--max-concurrency", "0"]).is_err());
    }
}
