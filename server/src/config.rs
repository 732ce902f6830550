//! `reinsd` flags. Every flag can also be set by an environment variable `REINS_…`;
//! durations take the usual human form (`500ms`, `3s`, `2m`, `24h`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::engine::kinds::check_kind_name;
use crate::executor::exec::{AllowedProgram, EnvName, EnvPolicy, ExecPolicy, Rlimits, SearchPath};
use crate::limits::{CheckpointBudget, Limits};
use crate::listener::{self, ConnectionLimits};
use crate::store::redis::RedisAccess;
use crate::task::{CheckpointLimits, MAX_DURATION};
use crate::tls::TlsFiles;

/// A human duration (`500ms`, `3s`) no longer than the service's [`MAX_DURATION`].
/// A `--redis-prefix`: anything but braces, which would make a hash tag of it on a
/// cluster (and put every key in one slot).
fn redis_prefix(text: &str) -> Result<String, String> {
    if text.contains(['{', '}']) {
        return Err("may not hold `{` or `}`".to_owned());
    }
    Ok(text.to_owned())
}

fn duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|err| err.to_string())?;
    if duration > MAX_DURATION {
        return Err("must be at most 10,000 years".to_owned());
    }
    Ok(duration)
}

/// A [`duration`] that must not be zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        Duration::ZERO => Err("must be more than 0".to_owned()),
        duration => Ok(duration),
    }
}

/// The values of one occurrence of a list flag (`--allow-exec sh,date`, or its
/// environment variable): comma-separated, empty items skipped, so that an empty variable
/// (`REINS_ALLOW_EXEC=`) means an empty list rather than one bad entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommaList<T>(pub Vec<T>);

impl<T: FromStr<Err = String>> FromStr for CommaList<T> {
    type Err = String;

    fn from_str(text: &str) -> Result<CommaList<T>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| item.parse().map_err(|why| format!("{item:?}: {why}")))
            .collect::<Result<_, _>>()
            .map(CommaList)
    }
}

/// Every value of a repeatable list flag, in order.
fn all<T: Clone>(lists: &[CommaList<T>]) -> Vec<T> {
    lists
        .iter()
        .flat_map(|list| list.0.iter().cloned())
        .collect()
}

/// A `--worker-kind`: a name a worker's `hello` could use (`engine::kinds`), so that
/// every kind StartTask accepts has the one shape.
fn kind_name(text: &str) -> Result<String, String> {
    check_kind_name(text)?;
    Ok(text.to_owned())
}

/// `--worker-kind-ttl`: replicas refresh served kinds three times per TTL, so a TTL of
/// milliseconds would have them write to the store all the time.
fn worker_kind_ttl(text: &str) -> Result<Duration, String> {
    let ttl = duration(text)?;
    if ttl < Duration::from_secs(1) {
        return Err("must be at least 1s".to_owned());
    }
    Ok(ttl)
}

/// `--exec-rlimit`: parsed, and checked against the server's own hard limits.
fn rlimits(text: &str) -> Result<Rlimits, String> {
    let rlimits = Rlimits::parse(text)?;
    rlimits.check_against_server()?;
    Ok(rlimits)
}

/// A replica id: non-empty (an empty `REINS_REPLICA_ID=` would give tasks an empty owner,
/// which the stores read as "nobody"), and safe inside key and channel names.
fn replica_id(text: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if text.is_empty() || text.len() > 253 || !text.chars().all(allowed) {
        return Err(
            "must be 1 to 253 characters of A-Z a-z 0-9 . _ - (unset it to use the hostname)"
                .to_owned(),
        );
    }
    Ok(text.to_owned())
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

    /// This replica's id, recorded as the `owner` of the tasks it runs and part of its Redis
    /// key and channel names: 1 to 253 characters of `A-Z a-z 0-9 . _ -` (a Kubernetes pod
    /// name fits). Default: the hostname.
    #[arg(long, env = "REINS_REPLICA_ID", value_parser = replica_id)]
    pub replica_id: Option<String>,

    /// Program the `exec` kind may run: a bare name (looked up on the server's PATH) or an
    /// absolute path, resolved at startup; a task's argv[0] must resolve, on the server's
    /// PATH, to the same file. Relative paths are refused. Repeatable; the environment
    /// variable takes a comma-separated list. Empty: `exec` is off.
    #[arg(long = "allow-exec", env = "REINS_ALLOW_EXEC", value_name = "PROGRAM")]
    pub allow_exec: Vec<CommaList<AllowedProgram>>,

    /// A variable of the server's environment that exec tasks get (tasks start with PATH
    /// and the client's `env` only). Repeatable, or comma-separated.
    #[arg(
        long = "exec-pass-env",
        env = "REINS_EXEC_PASS_ENV",
        value_name = "NAME"
    )]
    pub exec_pass_env: Vec<CommaList<EnvName>>,

    /// A variable clients may set in an exec task's `env` although it is refused by
    /// default (PATH, LD_*, DYLD_*, BASH_ENV, PYTHONPATH, …). Repeatable, or
    /// comma-separated.
    #[arg(
        long = "exec-allow-env",
        env = "REINS_EXEC_ALLOW_ENV",
        value_name = "NAME"
    )]
    pub exec_allow_env: Vec<CommaList<EnvName>>,

    /// Resource limits of every exec program, e.g. `cpu=10s,as=1GiB,nofile=256`: cpu
    /// (seconds), as, data, stack, fsize, core (bytes; K, M, G, T are base 1024), nofile.
    /// Per process, soft and hard alike. Unset: the server's own limits.
    #[arg(long = "exec-rlimit", env = "REINS_EXEC_RLIMIT", value_name = "LIMITS", value_parser = rlimits)]
    pub exec_rlimit: Option<Rlimits>,

    /// A task kind served by workers (WorkerService), accepted by StartTask even before a
    /// worker for it has connected; such tasks wait PENDING until one does. Repeatable.
    /// Declared kinds never expire; kinds learned from workers are accepted too (see
    /// --learn-worker-kinds).
    #[arg(
        long = "worker-kind",
        env = "REINS_WORKER_KINDS",
        value_name = "KIND",
        value_delimiter = ',',
        value_parser = kind_name
    )]
    pub worker_kinds: Vec<String>,

    /// Whether a worker's `hello` may name kinds that are not declared with --worker-kind,
    /// making them valid for StartTask on every replica until --worker-kind-ttl after the
    /// last worker serving them left. `false`: only built-in and declared kinds are valid,
    /// and a hello naming another kind is refused (PERMISSION_DENIED, KIND_NOT_DECLARED).
    #[arg(
        long,
        env = "REINS_LEARN_WORKER_KINDS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub learn_worker_kinds: bool,

    /// How long a kind learned from workers stays valid after no worker on any replica
    /// serves it any more. At least 1s.
    #[arg(long, env = "REINS_WORKER_KIND_TTL", default_value = "10m", value_parser = worker_kind_ttl)]
    pub worker_kind_ttl: Duration,

    /// Grace period of a soft cancel that does not name one, and of timeouts.
    #[arg(long, env = "REINS_DEFAULT_GRACE", default_value = "30s", value_parser = duration)]
    pub default_grace: Duration,

    /// How long a session cancelled by CancelTasks (filtering by the session alone)
    /// refuses new tasks with SESSION_CANCELLED.
    #[arg(long, env = "REINS_CANCELLED_SESSION_TTL", default_value = "10m", value_parser = duration)]
    pub cancelled_session_ttl: Duration,

    /// How long finished tasks stay readable.
    #[arg(long, env = "REINS_RETENTION", default_value = "24h", value_parser = duration)]
    pub retention: Duration,

    /// On SIGTERM/SIGINT, how long running tasks may take to finish before they are soft-
    /// and then hard-cancelled.
    #[arg(long, env = "REINS_SHUTDOWN_GRACE", default_value = "30s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// Redis holding the shared state of every replica, e.g. `redis://127.0.0.1:6379`
    /// (`rediss://` for TLS), or a Redis Cluster:
    /// `redis+cluster://host1:port,host2:port,…` (`rediss+cluster://`), any of its nodes.
    /// Unset: the embedded in-memory store (a single replica).
    #[arg(long, env = "REINS_REDIS_URL")]
    pub redis_url: Option<String>,

    /// PEM CA certificate(s) of a `rediss://` Redis whose certificate the system's roots
    /// do not cover.
    #[arg(long, env = "REINS_REDIS_CA", value_name = "FILE")]
    pub redis_ca: Option<PathBuf>,

    /// A file holding the Redis password (its first line), e.g. a mounted Secret; wins
    /// over a password in --redis-url. Passwords never appear in logs or errors.
    #[arg(long, env = "REINS_REDIS_PASSWORD_FILE", value_name = "FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// Prefix of every Redis key and channel, so deployments can share a Redis. No `{` or
    /// `}`: on a cluster the key's hash tag follows it.
    #[arg(long, env = "REINS_REDIS_PREFIX", default_value = "reins:", value_parser = redis_prefix)]
    pub redis_prefix: String,

    /// On a Redis Cluster, the number of shards (hash tags) tasks are spread over, at most
    /// 256; each holds whole task trees. Fixed for the life of a deployment's data: every
    /// replica must use the same, and changing it makes existing tasks unreachable. More
    /// shards than masters, so a resharding can move them (16 spreads over up to 16
    /// masters). Ignored on one Redis.
    #[arg(long, env = "REINS_REDIS_SHARDS", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub redis_shards: u16,

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

    /// Checkpoints a task keeps; past it the oldest are dropped (and counted in
    /// `partial_results_dropped`).
    #[arg(long, env = "REINS_MAX_CHECKPOINTS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_checkpoints: u32,

    /// Total bytes of a task's checkpoints (their protobuf encoding); past it the oldest are
    /// dropped. A single
    /// checkpoint larger than this is not kept (it is counted as dropped). With the other
    /// limits of a record this keeps every task under the message size.
    #[arg(long, env = "REINS_MAX_CHECKPOINT_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_checkpoint_bytes: u64,

    /// How long a WatchTask stream may stay quiet before the server sends a heartbeat event
    /// (the last version again, `heartbeat` set), so that proxies do not cut it for being
    /// idle. `0s`: no heartbeats.
    #[arg(long, env = "REINS_WATCH_HEARTBEAT", default_value = "15s", value_parser = duration)]
    pub watch_heartbeat: Duration,

    /// Connections held at once. At the limit a new connection takes the place of the
    /// oldest one that has not sent its HTTP/2 preface yet, or is closed at once if all
    /// have. Default: 4096, or half the open-files limit when that is lower.
    #[arg(long, env = "REINS_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,

    /// How long a new connection may take to send the HTTP/2 client preface before it is
    /// closed.
    #[arg(long, env = "REINS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub handshake_timeout: Duration,

    /// How long a connection may stay open without a call in progress (a stream counts;
    /// keepalive pings do not) before it is closed; `0s`: never.
    #[arg(long, env = "REINS_IDLE_TIMEOUT", default_value = "5m", value_parser = duration)]
    pub idle_timeout: Duration,

    /// How often the server pings each connection (HTTP/2 keepalive); workers are told it
    /// as their heartbeat interval.
    #[arg(long, env = "REINS_KEEPALIVE_INTERVAL", default_value = "10s", value_parser = positive_duration)]
    pub keepalive_interval: Duration,

    /// How long the server waits for the answer to a ping before it drops the connection
    /// (and a worker on it is lost).
    #[arg(long, env = "REINS_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub keepalive_timeout: Duration,

    /// Connections older than this get a GOAWAY: clients finish their calls and reconnect,
    /// which spreads them over replicas behind a balancer. Unset: no limit.
    #[arg(long, env = "REINS_MAX_CONNECTION_AGE", value_parser = positive_duration)]
    pub max_connection_age: Option<Duration>,

    /// After `--max-connection-age`, how long open calls (streams too) may go on before
    /// the connection is closed. Unset: as long as they take.
    #[arg(long, env = "REINS_MAX_CONNECTION_AGE_GRACE", value_parser = duration, requires = "max_connection_age")]
    pub max_connection_age_grace: Option<Duration>,

    /// Address to serve Prometheus metrics on (`GET /metrics`), with `GET /healthz`
    /// (liveness) and `GET /readyz` (readiness, as gRPC health), e.g. `0.0.0.0:9464`.
    /// Unset: no metrics endpoint.
    #[arg(long, env = "REINS_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// PEM certificate chain to serve TLS with (with --tls-key). Re-read when it changes
    /// (see --reload-interval): new connections get the new certificate, open ones go on.
    /// Unset: plaintext.
    #[arg(
        long,
        env = "REINS_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "REINS_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates for mutual TLS: every client must present a certificate signed
    /// by one of them; its identity (URI SAN, else DNS SAN, else subject CN) can name a
    /// principal in --auth-config (`client_cert`).
    #[arg(
        long,
        env = "REINS_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// The auth config (TOML): principals with their tenant and roles, the JWT issuer, the
    /// tenants' quotas; re-read when it changes. Unset: auth is off (one tenant, `default`,
    /// every call allowed).
    #[arg(long, env = "REINS_AUTH_CONFIG", value_name = "FILE")]
    pub auth_config: Option<PathBuf>,

    /// How often the TLS files and the auth config are checked for changes.
    #[arg(long, env = "REINS_RELOAD_INTERVAL", default_value = "5s", value_parser = positive_duration)]
    pub reload_interval: Duration,

    #[arg(long, env = "REINS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub limits: Limits,
}

impl Config {
    /// The watch heartbeat period; `None` when turned off.
    pub fn watch_heartbeat(&self) -> Option<Duration> {
        (!self.watch_heartbeat.is_zero()).then_some(self.watch_heartbeat)
    }

    pub fn replica_id(&self) -> String {
        self.replica_id
            .clone()
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
    }

    /// The checks that involve several flags; `reinsd` refuses to start when one fails.
    pub fn check(&self) -> Result<(), String> {
        self.limits.check_fits(
            self.max_message_size,
            self.checkpoint_budget(),
            &self.replica_id(),
        )
    }

    /// `--max-checkpoints` and `--max-checkpoint-bytes` for the record-size arithmetic.
    fn checkpoint_budget(&self) -> CheckpointBudget {
        CheckpointBudget {
            count: self.max_checkpoints as usize,
            bytes: usize::try_from(self.max_checkpoint_bytes).unwrap_or(usize::MAX),
        }
    }

    pub fn checkpoint_limits(&self) -> CheckpointLimits {
        CheckpointLimits {
            max_count: self.max_checkpoints as usize,
            max_bytes: self.max_checkpoint_bytes,
        }
    }

    /// The limits on connections, given the open-files limit in force.
    pub fn connection_limits(&self, open_files: u64) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections.map_or_else(
                || listener::default_max_connections(open_files),
                |max| max as usize,
            ),
            handshake_timeout: self.handshake_timeout,
            idle_timeout: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
            max_age_and_grace: self
                .max_connection_age
                .zip(self.max_connection_age_grace)
                .map(|(age, grace)| age + grace),
        }
    }

    /// What `--redis-ca` and `--redis-password-file` add to the Redis URL.
    pub fn redis_access(&self) -> Result<RedisAccess, String> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|err| format!("{}: {err}", path.display()))
        };
        let password = match &self.redis_password_file {
            Some(path) => {
                let text = String::from_utf8(read(path)?)
                    .map_err(|_| format!("{}: not UTF-8", path.display()))?;
                Some(text.lines().next().unwrap_or_default().to_owned())
            }
            None => None,
        };
        Ok(RedisAccess {
            ca_pem: self.redis_ca.as_ref().map(read).transpose()?,
            password,
        })
    }

    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    /// What `exec` tasks may run and with what, from the `exec` flags and the server's
    /// environment as it is now.
    pub fn exec_policy(&self) -> ExecPolicy {
        let search_path = SearchPath::of_server();
        ExecPolicy {
            allowlist: all(&self.allow_exec),
            env: EnvPolicy::new(
                &search_path,
                &all(&self.exec_pass_env),
                &all(&self.exec_allow_env),
            ),
            search_path,
            rlimits: self.exec_rlimit.clone().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests;
