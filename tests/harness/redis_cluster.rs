//! A real Redis Cluster for tests: `redis-server --cluster-enabled yes` processes on free
//! loopback ports (each a [`RedisServer`] in its own temporary directory, its cluster bus
//! on a free port of its own too), joined by `redis-cli --cluster create`, with replicas
//! when asked. [`RedisCluster::fail_over`] promotes a replica (`CLUSTER FAILOVER`, the
//! coordinated hand-over an operator does: no acknowledged write is lost).

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::redis_server::{RedisServer, free_port};

/// How long the cluster may take to agree on its slots after `--cluster create`, and a
/// failover to complete.
const SETTLE: Duration = Duration::from_secs(30);
/// Redis gives up a manual failover after `cluster-mf-timeout` (5 s by default).
const MANUAL_FAILOVER_TIMEOUT: Duration = Duration::from_secs(6);

pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli (package redis-tools; tests/run.sh installs it)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value of `field` in a `CLUSTER INFO`/`INFO` answer.
fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.trim().strip_prefix(&format!("{field}:")))
        .map(str::to_owned)
}

impl RedisCluster {
    /// `masters` masters with `replicas` replicas each, all slots assigned and agreed on.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                let bus = free_port().to_string();
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus,
                    // A lapsed master is failed over after 2 s (the default is 15 s).
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_until("every node sees the cluster ok", |cluster| {
            cluster.nodes.iter().all(|node| {
                let info = redis_cli(node.port(), &["CLUSTER", "INFO"]);
                info_field(&info, "cluster_state").as_deref() == Some("ok")
                    && info_field(&info, "cluster_slots_ok").as_deref() == Some("16384")
                    && info_field(&info, "cluster_known_nodes")
                        == Some(cluster.nodes.len().to_string())
            })
        });
        cluster
    }

    /// One cluster for the whole test process (three masters, no replicas): tests share it
    /// under prefixes of their own.
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<RedisCluster> = OnceLock::new();
        SHARED.get_or_init(|| RedisCluster::start(3, 0))
    }

    fn wait_until(&self, what: &str, done: impl Fn(&RedisCluster) -> bool) {
        let deadline = Instant::now() + SETTLE;
        while !done(self) {
            assert!(Instant::now() < deadline, "Redis Cluster: not so: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    fn role(&self, node: &RedisServer) -> String {
        info_field(&redis_cli(node.port(), &["INFO", "replication"]), "role").unwrap_or_default()
    }

    /// The ports of the current masters.
    pub fn master_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| self.role(node) == "master")
            .map(RedisServer::port)
            .collect()
    }

    /// Promotes a replica of the master on `master_port` with `CLUSTER FAILOVER` and waits
    /// until it is a master and every node sees the cluster ok again; returns its port.
    pub fn fail_over(&self, master_port: u16) -> u16 {
        let replica = self
            .nodes
            .iter()
            .find(|node| {
                info_field(
                    &redis_cli(node.port(), &["INFO", "replication"]),
                    "master_port",
                )
                .as_deref()
                    == Some(&master_port.to_string())
            })
            .unwrap_or_else(|| panic!("no replica of the master on port {master_port}"));
        // A manual failover needs the replica in sync, and gives up silently after
        // `cluster-mf-timeout` (5 s) if the master does not hand over in time (a loaded
        // machine): wait for the link, and ask again until the replica is master.
        self.wait_until("the replica is in sync with its master", |_| {
            info_field(
                &redis_cli(replica.port(), &["INFO", "replication"]),
                "master_link_status",
            )
            .as_deref()
                == Some("up")
        });
        let deadline = Instant::now() + SETTLE;
        while self.role(replica) != "master" {
            assert!(
                Instant::now() < deadline,
                "Redis Cluster: the replica never took over"
            );
            let answer = redis_cli(replica.port(), &["CLUSTER", "FAILOVER"]);
            assert_eq!(answer.trim(), "OK", "CLUSTER FAILOVER: {answer}");
            let asked = Instant::now();
            while self.role(replica) != "master" && asked.elapsed() < MANUAL_FAILOVER_TIMEOUT {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let promoted = replica.port();
        self.wait_until("every node sees the cluster ok again", |cluster| {
            cluster.nodes.iter().all(|node| {
                info_field(
                    &redis_cli(node.port(), &["CLUSTER", "INFO"]),
                    "cluster_state",
                )
                .as_deref()
                    == Some("ok")
            })
        });
        promoted
    }
}

/// Where a test deployment keeps its state on Redis: a `redis-server` of its own, or a
/// prefix of its own on the process's shared [`RedisCluster`]
/// (`REINS_E2E_STORE=redis-cluster`).
pub enum TestRedis {
    Server(RedisServer),
    InCluster { url: String, prefix: String },
}

impl TestRedis {
    /// A new one for a test: on the shared cluster under `REINS_E2E_STORE=redis-cluster`,
    /// else a `redis-server` of its own.
    pub fn for_this_run() -> TestRedis {
        if crate::on_redis_cluster() {
            TestRedis::InCluster {
                url: RedisCluster::shared().url(),
                prefix: format!("e2e-{}:", uuid::Uuid::now_v7().simple()),
            }
        } else {
            TestRedis::Server(RedisServer::start())
        }
    }

    /// The flags of a replica that keeps its state here.
    pub fn args(&self) -> Vec<String> {
        match self {
            TestRedis::Server(server) => vec!["--redis-url".to_owned(), server.url()],
            TestRedis::InCluster { url, prefix } => vec![
                "--redis-url".to_owned(),
                url.clone(),
                "--redis-prefix".to_owned(),
                prefix.clone(),
            ],
        }
    }

    /// The `redis-server`, for tests that stop and start it.
    pub fn server(&mut self) -> &mut RedisServer {
        match self {
            TestRedis::Server(server) => server,
            TestRedis::InCluster { .. } => panic!("this test's Redis is a shared cluster"),
        }
    }
}
