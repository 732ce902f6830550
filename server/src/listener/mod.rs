//! The accept loop, and the limits on the connections it hands to tonic. Without them a
//! connection that never speaks holds a file descriptor for ever: enough of them exhaust the
//! open-files limit and every new client hangs.
//!
//! - **`--max-connections`** ([`slots`]): at most that many connections are held. At the
//!   limit a new connection takes the place of the oldest one that has not yet sent its
//!   HTTP/2 preface (which is closed), so a flood of silent connections cannot lock real
//!   clients out; when every connection has sent it, the new one is closed at once.
//! - **`--handshake-timeout`** ([`connection`]): a connection that has not sent the 24-byte
//!   HTTP/2 client preface within it is closed.
//! - **`--idle-timeout`** ([`connection`], [`calls`]): a connection without an open call for
//!   that long is closed. A long WatchTask or worker stream is an open call; HTTP/2
//!   keepalive PINGs are not calls, so they do not keep a connection alive.
//! - **`--max-connection-age-grace`** ([`connection`]): tonic sends the GOAWAY at
//!   `--max-connection-age`; the connection is closed when the grace after it is over too.
//!
//! Why not in tonic: tonic 0.14 and hyper have none of the three (hyper's only timeout is
//! HTTP/1's header read). Serving the connections with hyper-util ourselves would let an
//! idle connection end with a GOAWAY, but would replace tonic's own per-connection stack
//! (its `grpc-timeout` handling, every `Server` builder setting): the connections are
//! wrapped instead ([`Connection`]), and an idle one is closed when nothing is waiting to
//! be read, so no request that reached the server is lost.
//!
//! - **TLS** ([`transport`]): with `--tls-cert`, each accepted connection does its TLS
//!   handshake (with the certificate current at that moment, see `tls`) concurrently with
//!   the others, within `--handshake-timeout`, holding its place among `--max-connections`
//!   meanwhile; it is handed to tonic once the handshake is done.
//!
//! A warning says when connections are turned away or displaced, at most every
//! [`WARNING_INTERVAL`], with how many since the last one.

mod calls;
mod connection;
mod slots;
mod transport;

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

pub use self::calls::CountCallsLayer;
pub use self::connection::Connection;
use self::slots::{Admission, Slot, Slots};
use self::transport::Transport;
use crate::tls::ServerTls;

/// The most connections held by default; lower when the open-files limit is low.
const DEFAULT_MAX_CONNECTIONS: u64 = 4096;
/// At most one warning of each kind this often.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// How long the loop waits after an accept error other than a failed connection (out of
/// file descriptors, mostly): retrying at once would spin, as the connection stays queued.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How many connections are held and how long they may stay silent or idle.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    /// `None`: idle connections stay open.
    pub idle_timeout: Option<Duration>,
    /// `--max-connection-age` plus its grace: a connection is closed this long after it
    /// was accepted, open calls or not (tonic sends the GOAWAY at the age). `None`: never.
    pub max_age_and_grace: Option<Duration>,
}

/// `--max-connections` when it is not given: [`DEFAULT_MAX_CONNECTIONS`], or half the
/// open-files limit when that is lower, leaving the other half to the store, exec tasks
/// and logs.
pub fn default_max_connections(open_files: u64) -> usize {
    DEFAULT_MAX_CONNECTIONS.min(open_files / 2).max(1) as usize
}

/// The connections accepted on one listener, within its limits, shared by the servers that
/// take turns serving them: the one that runs until a drain begins (it sends every
/// connection a GOAWAY then) and the one that serves newcomers during the drain (health
/// probes, and clients not yet told that this replica is going), until the end. The
/// listening socket stays open until the last copy is dropped. Over TLS when `tls` is given
/// (each handshake with the configuration in force when it begins).
#[derive(Clone)]
pub struct Incoming(Arc<tokio::sync::Mutex<Accepting>>);

impl Incoming {
    pub fn new(
        listener: TcpListener,
        limits: ConnectionLimits,
        tls: Option<Arc<ServerTls>>,
    ) -> Incoming {
        Incoming(Arc::new(tokio::sync::Mutex::new(Accepting {
            listener,
            slots: Slots::new(limits.max_connections),
            limits,
            tls,
            handshakes: FuturesUnordered::new(),
            refused: Throttled::default(),
            displaced: Throttled::default(),
            failed: Throttled::default(),
        })))
    }

    /// The accepted connections, for `serve_with_incoming_shutdown`. The stream never ends
    /// and never fails: accept errors are logged and retried. Dropping it (as tonic does at
    /// its shutdown signal) lets another stream of the same listener take over.
    pub fn stream(&self) -> impl Stream<Item = Result<Connection, Infallible>> + use<> {
        futures_util::stream::unfold(Arc::clone(&self.0), |accepting| async move {
            // Accepting is cancel-safe: a stream dropped while waiting loses no connection.
            let connection = accepting.lock().await.next().await;
            Some((Ok(connection), accepting))
        })
    }
}

struct Accepting {
    listener: TcpListener,
    slots: Arc<Slots>,
    limits: ConnectionLimits,
    tls: Option<Arc<ServerTls>>,
    /// The TLS handshakes in progress.
    handshakes: FuturesUnordered<BoxFuture<'static, Option<Connection>>>,
    /// Warnings of connections closed at once at the limit…
    refused: Throttled,
    /// …of connections closed to make room for a newer one…
    displaced: Throttled,
    /// …and of accept errors.
    failed: Throttled,
}

impl Accepting {
    async fn next(&mut self) -> Connection {
        loop {
            tokio::select! {
                Some(handshaken) = self.handshakes.next() => {
                    if let Some(connection) = handshaken {
                        return connection;
                    }
                }
                accepted = self.listener.accept() => {
                    let Some((stream, slot)) = self.admit(accepted).await else {
                        continue;
                    };
                    let now = Instant::now();
                    match &self.tls {
                        None => {
                            return Connection::new(Transport::Plain(stream), slot, &self.limits, now);
                        }
                        Some(tls) => self.handshakes.push(Box::pin(transport::handshake(
                            Arc::clone(tls),
                            stream,
                            slot,
                            self.limits,
                            now,
                        ))),
                    }
                }
            }
        }
    }

    /// A place for an accepted socket; `None` when it is refused or the accept failed.
    async fn admit(
        &mut self,
        accepted: io::Result<(TcpStream, std::net::SocketAddr)>,
    ) -> Option<(TcpStream, Slot)> {
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            // The client gave up before it was accepted: nothing to do.
            Err(err) if is_connection_error(&err) => return None,
            Err(err) => {
                if let Some(count) = self.failed.ready(Instant::now()) {
                    tracing::warn!(%err, count, "cannot accept connections");
                }
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                return None;
            }
        };
        // Small request/reply messages: Nagle's algorithm would hold them back ~40 ms
        // (tonic applies its own nodelay setting only to listeners it binds itself).
        let _ = stream.set_nodelay(true);
        let slot = match self.slots.admit() {
            Admission::Free(slot) => slot,
            Admission::Displacing(slot) => {
                if let Some(count) = self.displaced.ready(Instant::now()) {
                    tracing::warn!(
                        count,
                        max_connections = self.limits.max_connections,
                        "at --max-connections: closed connections that had not sent the \
                         HTTP/2 preface to make room for newer ones"
                    );
                }
                slot
            }
            Admission::Refused => {
                if let Some(count) = self.refused.ready(Instant::now()) {
                    tracing::warn!(
                        count,
                        max_connections = self.limits.max_connections,
                        "at --max-connections: refused new connections"
                    );
                }
                return None;
            }
        };
        Some((stream, slot))
    }
}

/// Errors of one connection that failed while it was queued, rather than of the listener.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A warning given at most every [`WARNING_INTERVAL`]: `ready` counts an event and says
/// whether to warn now, with the number of events since the last warning (this one too).
#[derive(Debug, Default)]
struct Throttled {
    quiet_until: Option<Instant>,
    count: u64,
}

impl Throttled {
    fn ready(&mut self, now: Instant) -> Option<u64> {
        self.count += 1;
        if self.quiet_until.is_some_and(|until| now < until) {
            return None;
        }
        self.quiet_until = Some(now + WARNING_INTERVAL);
        Some(std::mem::take(&mut self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_throttled_and_count_what_they_held_back() {
        let start = Instant::now();
        let mut warning = Throttled::default();
        assert_eq!(warning.ready(start), Some(1));
        assert_eq!(warning.ready(start + Duration::from_secs(1)), None);
        assert_eq!(warning.ready(start + Duration::from_secs(9)), None);
        assert_eq!(warning.ready(start + WARNING_INTERVAL), Some(3));
        assert_eq!(warning.ready(start + 3 * WARNING_INTERVAL), Some(1));
    }

    #[test]
    fn the_default_connection_limit_leaves_half_the_open_files() {
        assert_eq!(default_max_connections(1_048_576), 4096);
        assert_eq!(default_max_connections(8192), 4096);
        assert_eq!(default_max_connections(1024), 512);
        assert_eq!(default_max_connections(1), 1);
    }
}
