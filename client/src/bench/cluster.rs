//! The replicas under test: each one's address, optional replica id and a few client
//! connections used in turn, so concurrent calls are not all multiplexed on one HTTP/2
//! connection.

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use reins_client::Client;

use super::{BenchError, BenchResult, tasks};

/// Connections opened to each replica for the request/response scenarios.
const CONNECTIONS_PER_SERVER: usize = 4;
/// The task that keeps the full replica busy sleeps this long (it is cancelled after).
const FILLER_MS: u64 = 3_600_000;
/// Attempts at getting the filler onto the full replica (another replica may take it).
const FILL_ATTEMPTS: usize = 10;

/// `URL` or `REPLICA_ID=URL` from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    pub replica: Option<String>,
    pub url: String,
}

impl FromStr for ServerSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<ServerSpec, String> {
        let (replica, url) = match text.split_once('=') {
            // An `=` after the scheme or in the path belongs to the URL.
            Some((id, url)) if !id.is_empty() && !id.contains([':', '/']) => {
                (Some(id.to_owned()), url)
            }
            _ => (None, text),
        };
        if url.is_empty() {
            return Err("expected URL or REPLICA_ID=URL".to_owned());
        }
        Ok(ServerSpec {
            replica,
            url: url.to_owned(),
        })
    }
}

pub struct Server {
    pub spec: ServerSpec,
    clients: Vec<Client>,
    next: AtomicUsize,
}

impl Server {
    async fn connect(spec: &ServerSpec) -> BenchResult<Server> {
        let mut clients = Vec::with_capacity(CONNECTIONS_PER_SERVER);
        for _ in 0..CONNECTIONS_PER_SERVER {
            // Each `connect` opens its own channel, hence its own TCP connection.
            clients.push(Client::connect(spec.url.clone()).await?);
        }
        Ok(Server {
            spec: spec.clone(),
            clients,
            next: AtomicUsize::new(0),
        })
    }

    /// The next of this replica's connections, in turn.
    pub fn client(&self) -> &Client {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        &self.clients[n % self.clients.len()]
    }

    /// The replica id if given, else the URL.
    pub fn name(&self) -> &str {
        self.spec.replica.as_deref().unwrap_or(&self.spec.url)
    }
}

/// Whether a call went to the replica that owns the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    SameReplica,
    OtherReplica,
    /// Replica ids were not given: cannot tell.
    Unknown,
}

pub struct Cluster {
    /// Replica A first.
    pub servers: Vec<Server>,
    /// The replica kept full for cross-replica dispatch.
    pub full: Option<Server>,
}

/// The task keeping the full replica busy; [`Filler::release`] cancels it.
pub struct Filler {
    task_id: String,
}

impl Cluster {
    pub async fn connect(
        servers: &[ServerSpec],
        full: Option<&ServerSpec>,
    ) -> BenchResult<Cluster> {
        let mut connected = Vec::with_capacity(servers.len());
        for spec in servers {
            connected.push(Server::connect(spec).await?);
        }
        let full = match full {
            Some(spec) => Some(Server::connect(spec).await?),
            None => None,
        };
        Ok(Cluster {
            servers: connected,
            full,
        })
    }

    /// Replica A.
    pub fn first(&self) -> &Server {
        &self.servers[0]
    }

    /// The replicas in turn, for spreading load.
    /// How many replicas are driven.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn nth(&self, n: u64) -> &Server {
        &self.servers[(n % self.servers.len() as u64) as usize]
    }

    /// A replica to call about a task owned by `owner`: another one whenever possible.
    pub fn other_than(&self, owner: &str) -> (&Server, Placement) {
        let other = self
            .servers
            .iter()
            .find(|server| server.spec.replica.as_deref().is_some_and(|id| id != owner));
        match other {
            Some(server) => (server, Placement::OtherReplica),
            None if self.servers.len() == 1 => (self.first(), Placement::SameReplica),
            None if self.servers.iter().all(|s| s.spec.replica.is_some()) => {
                (self.first(), Placement::SameReplica)
            }
            None => (&self.servers[1], Placement::Unknown),
        }
    }

    /// Fills the full replica, if there is one, with one long task it runs itself. Done
    /// for the whole run: an idle replica with a free slot would take part in every
    /// dispatch race of the other scenarios.
    pub async fn occupy_full(&self) -> BenchResult<Option<Filler>> {
        let Some(full) = &self.full else {
            return Ok(None);
        };
        let Some(replica) = &full.spec.replica else {
            return Err(BenchError::Unexpected(
                "--full-server needs the replica id: ID=URL".to_owned(),
            ));
        };
        for _ in 0..FILL_ATTEMPTS {
            let client = full.client();
            let task = client
                .start(
                    tasks::sleep(1, FILLER_MS).description("reins-bench: keeps this replica full"),
                )
                .await?;
            let task = tasks::wait_for(client, task, tasks::has_started).await?;
            if &task.owner == replica {
                return Ok(Some(Filler { task_id: task.id }));
            }
            client
                .hard_cancel(task.id, "reins-bench: ran on another replica")
                .await?;
        }
        Err(BenchError::Unexpected(format!(
            "could not get a task to run on full replica {replica} (is it started with --max-concurrency 1?)"
        )))
    }
}

impl Filler {
    pub async fn release(self, cluster: &Cluster) -> BenchResult<()> {
        if let Some(full) = &cluster.full {
            full.client()
                .hard_cancel(self.task_id, "reins-bench: done")
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_is_a_url_with_an_optional_replica_id() {
        assert_eq!(
            "a=http://127.0.0.1:1".parse(),
            Ok(ServerSpec {
                replica: Some("a".into()),
                url: "http://127.0.0.1:1".into()
            })
        );
        assert_eq!(
            "http://host:1/x=y".parse(),
            Ok(ServerSpec {
                replica: None,
                url: "http://host:1/x=y".into()
            })
        );
        assert!("a=".parse::<ServerSpec>().is_err());
    }
}
