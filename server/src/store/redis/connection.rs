//! How the store reaches Redis: one server (or a primary) through a `ConnectionManager`, or
//! a Redis Cluster through redis-rs's cluster client, chosen by `--redis-url`'s scheme
//! (`redis://`, `rediss://`, `redis+cluster://`, `rediss+cluster://`). Both connect
//! lazily, bound every command by [`RESPONSE_TIMEOUT`], and reconnect by themselves.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{Client, Cmd, Pipeline, ProtocolVersion, PushInfo, RedisFuture, Value};

use super::RedisAccess;

/// How long a command may take before the call fails with UNAVAILABLE.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command may take on a cluster node. Longer than on one Redis: a call's
/// commands fan out over the shards, so a burst queues several times as many commands
/// per call on the nodes' connections.
const CLUSTER_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the cluster client retries a command that met a moved slot, a failover or a
/// broken node connection before the call fails. Its waits grow from 100 ms up to
/// [`CLUSTER_MAX_RETRY_WAIT_MS`]: long enough to ride out a replica's promotion (about
/// `cluster-node-timeout`), short enough that a call does not hang.
const CLUSTER_RETRIES: u32 = 6;
const CLUSTER_MAX_RETRY_WAIT_MS: u64 = 1000;

/// Where `--redis-url` points.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// One Redis (`redis://…`, `rediss://…`).
    Single(String),
    /// A Redis Cluster: the URLs of the seed nodes it was given
    /// (`redis+cluster://[user:password@]host:port,host:port,…[/?…]`).
    Cluster(Vec<String>),
}

impl Target {
    /// The target of a `--redis-url`.
    pub fn parse(url: &str) -> Result<Target, String> {
        let (scheme, rest) = match url.split_once("://") {
            Some(("redis+cluster", rest)) => ("redis", rest),
            Some(("rediss+cluster", rest)) => ("rediss", rest),
            _ => return Ok(Target::Single(url.to_owned())),
        };
        let (hosts, tail) = match rest.find(['/', '?']) {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        let (credentials, hosts) = match hosts.rsplit_once('@') {
            Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
            None => (String::new(), hosts),
        };
        let nodes: Vec<String> = hosts
            .split(',')
            .filter(|host| !host.is_empty())
            .map(|host| format!("{scheme}://{credentials}{host}{tail}"))
            .collect();
        if nodes.is_empty() {
            return Err(format!("{scheme}+cluster:// names no node"));
        }
        Ok(Target::Cluster(nodes))
    }
}

/// The connection commands go through; cheap to clone (both kinds multiplex).
#[derive(Clone)]
pub enum Commands {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Single(connection) => connection.req_packed_command(cmd),
            Commands::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(connection) => connection.get_db(),
            Commands::Cluster(connection) => connection.get_db(),
        }
    }
}

/// What makes connections to a [`Target`]: one for commands, and one per pub/sub
/// subscriber with its pushes handed to a function.
#[expect(
    clippy::large_enum_variant,
    reason = "one is made per store, and not moved"
)]
pub enum Connector {
    Single(Client),
    Cluster(ClusterClient),
}

impl Connector {
    pub fn new(target: &Target, access: &RedisAccess) -> redis::RedisResult<Connector> {
        let tls = access.ca_pem.as_ref().map(|ca| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.clone()),
        });
        // Small request/reply messages: Nagle's algorithm would hold them back ~40 ms.
        let tcp = TcpSettings::default().set_nodelay(true);
        match target {
            Target::Single(url) => {
                let client = Client::open(url.as_str())?;
                let info = client.get_connection_info().clone();
                let mut settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                if let Some(password) = &access.password {
                    settings = settings.set_password(password);
                }
                let info = info.set_redis_settings(settings).set_tcp_settings(tcp);
                let client = match tls {
                    Some(certificates) => Client::build_with_tls(info, certificates)?,
                    None => Client::open(info)?,
                };
                Ok(Connector::Single(client))
            }
            Target::Cluster(nodes) => {
                let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .use_protocol(ProtocolVersion::RESP3)
                    .tcp_settings(tcp)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(CLUSTER_RESPONSE_TIMEOUT)
                    .retries(CLUSTER_RETRIES)
                    .max_retry_wait(CLUSTER_MAX_RETRY_WAIT_MS);
                if let Some(password) = &access.password {
                    builder = builder.password(password);
                }
                if let Some(certificates) = tls {
                    builder = builder.certs(certificates);
                }
                Ok(Connector::Cluster(builder.build()?))
            }
        }
    }

    fn manager_config() -> ConnectionManagerConfig {
        // One reconnect attempt per failed command: while Redis is down a call fails in
        // about a second instead of waiting out a long retry schedule. The next command
        // tries again, and the pub/sub connection has a watchdog that keeps trying.
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1))
    }

    fn cluster_config() -> ClusterConfig {
        ClusterConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(CLUSTER_RESPONSE_TIMEOUT)
    }

    pub fn commands(&self) -> redis::RedisResult<Commands> {
        Ok(match self {
            Connector::Single(client) => Commands::Single(ConnectionManager::new_lazy_with_config(
                client.clone(),
                Self::manager_config(),
            )?),
            Connector::Cluster(client) => Commands::Cluster(
                client.get_pending_async_connection_with_config(Self::cluster_config()),
            ),
        })
    }

    /// A connection whose pushes (messages of its subscriptions, disconnections) go to
    /// `pushes`, and which subscribes again by itself after reconnecting.
    pub fn subscriber(
        &self,
        pushes: impl Fn(PushInfo) + Send + Sync + 'static,
    ) -> redis::RedisResult<Commands> {
        let sender = move |push: PushInfo| {
            pushes(push);
            Ok::<(), std::convert::Infallible>(())
        };
        Ok(match self {
            Connector::Single(client) => Commands::Single(ConnectionManager::new_lazy_with_config(
                client.clone(),
                Self::manager_config()
                    .set_push_sender(sender)
                    .set_automatic_resubscription(),
            )?),
            // The cluster client always subscribes again, on whichever node owns a
            // channel's slot after a failover or a resharding.
            Connector::Cluster(client) => {
                Commands::Cluster(client.get_pending_async_connection_with_config(
                    Self::cluster_config().set_push_sender(sender),
                ))
            }
        })
    }
}

impl Commands {
    /// Subscribes to `channel`: sharded (`SSUBSCRIBE`) on a cluster when `sharded`.
    pub async fn subscribe(&mut self, channel: &str, sharded: bool) -> redis::RedisResult<()> {
        match self {
            Commands::Single(connection) => connection.subscribe(channel).await,
            Commands::Cluster(connection) if sharded => connection.ssubscribe(channel).await,
            Commands::Cluster(connection) => connection.subscribe(channel).await,
        }
    }

    pub async fn unsubscribe(&mut self, channel: &str, sharded: bool) -> redis::RedisResult<()> {
        match self {
            Commands::Single(connection) => connection.unsubscribe(channel).await,
            Commands::Cluster(connection) if sharded => connection.sunsubscribe(channel).await,
            Commands::Cluster(connection) => connection.unsubscribe(channel).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_names_each_seed_node_with_the_credentials_and_options() {
        assert_eq!(
            Target::parse("redis+cluster://:secret@10.0.0.1:7000,10.0.0.2:7001/?protocol=3"),
            Ok(Target::Cluster(vec![
                "redis://:secret@10.0.0.1:7000/?protocol=3".to_owned(),
                "redis://:secret@10.0.0.2:7001/?protocol=3".to_owned(),
            ]))
        );
        assert_eq!(
            Target::parse("rediss+cluster://a:1"),
            Ok(Target::Cluster(vec!["rediss://a:1".to_owned()]))
        );
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379/0"),
            Ok(Target::Single("redis://127.0.0.1:6379/0".to_owned()))
        );
        assert!(Target::parse("redis+cluster://").is_err());
    }
}
