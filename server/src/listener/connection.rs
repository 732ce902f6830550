//! [`Connection`]: one accepted TCP connection as tonic reads and writes it, which closes
//! itself when its time is up: no HTTP/2 preface within `--handshake-timeout`, no open call
//! for `--idle-timeout`, past `--max-connection-age` and its grace, or displaced by a newer
//! connection at `--max-connections`.
//!
//! The deadlines are kept where hyper reads: when a read finds nothing to read and the
//! deadline has passed, the read fails (no preface) or ends the stream (idle), and hyper
//! drops the connection. Bytes read pass through untouched. Between the checks the reader
//! sleeps on its timer, and is woken by [`Signals`] when the last call ends (to arm the idle
//! timer) or when it is displaced.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::ConnectionLimits;
use super::calls::Calls;
use super::slots::Slot;
use super::transport::Transport;
use crate::tls::ClientIdentity;

/// The length of the HTTP/2 client preface, `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: usize = 24;

/// What the rest of the listener tells one connection: the call counter how many calls are
/// open, the slots that it must make room. Shared with both; read by the connection.
#[derive(Default)]
pub(super) struct Signals {
    calls: Mutex<Calls>,
    displaced: AtomicBool,
    /// The connection's reader, to wake when either changes.
    reader: AtomicWaker,
}

impl Signals {
    pub(super) fn call_started(&self) {
        self.lock_calls().start();
    }

    pub(super) fn call_ended(&self) {
        let now_idle = self.lock_calls().end(Instant::now());
        if now_idle {
            self.reader.wake();
        }
    }

    pub(super) fn displace(&self) {
        self.displaced.store(true, Ordering::Release);
        self.reader.wake();
    }

    pub(super) fn is_displaced(&self) -> bool {
        self.displaced.load(Ordering::Acquire)
    }

    /// Ready once displaced; for a connection still in its TLS handshake.
    pub(super) fn poll_displaced(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.reader.register(cx.waker());
        if self.is_displaced() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn idle_since(&self) -> Option<Instant> {
        self.lock_calls().idle_since()
    }

    fn lock_calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        // Counting cannot panic half-way; a poisoned lock still holds a consistent count.
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the rest of the client preface: this many bytes.
    AwaitingPreface(usize),
    Serving,
    /// Ended by us: reads report the end of the stream from now on.
    Closed,
}

/// An accepted connection, served by tonic, holding its place among `--max-connections`.
pub struct Connection {
    stream: Transport,
    slot: Slot,
    phase: Phase,
    handshake_deadline: Instant,
    idle_timeout: Option<Duration>,
    /// The end of `--max-connection-age` and its grace.
    end_of_grace: Option<Instant>,
    /// The next deadline, re-armed when it changes.
    timer: Pin<Box<Sleep>>,
}

/// The connection's details for each of its requests: tonic puts them in the request's
/// extensions, where [`super::CountCallsLayer`] finds them.
#[derive(Clone)]
pub struct ConnectionInfo {
    pub(super) tcp: TcpConnectInfo,
    pub(super) signals: Arc<Signals>,
    /// The client certificate's identity (mTLS).
    pub(super) client: Option<ClientIdentity>,
}

impl Connection {
    /// A connection accepted at `accepted` (its TLS handshake, if any, is done).
    pub(super) fn new(
        stream: Transport,
        slot: Slot,
        limits: &ConnectionLimits,
        accepted: Instant,
    ) -> Connection {
        let handshake_deadline = accepted + limits.handshake_timeout;
        Connection {
            stream,
            slot,
            phase: Phase::AwaitingPreface(PREFACE_LEN),
            handshake_deadline,
            idle_timeout: limits.idle_timeout,
            end_of_grace: limits.max_age_and_grace.map(|lifetime| accepted + lifetime),
            timer: Box::pin(tokio::time::sleep_until(handshake_deadline)),
        }
    }

    /// When the connection is closed unless something happens first; `None`: not yet.
    fn deadline(&self) -> Option<Instant> {
        let of_phase = match self.phase {
            Phase::AwaitingPreface(_) => Some(self.handshake_deadline),
            Phase::Serving => self
                .slot
                .signals()
                .idle_since()
                .zip(self.idle_timeout)
                .map(|(since, timeout)| since + timeout),
            Phase::Closed => return None,
        };
        of_phase.into_iter().chain(self.end_of_grace).min()
    }

    fn received(&mut self, bytes: usize) {
        if let Phase::AwaitingPreface(left) = self.phase {
            if bytes >= left {
                self.phase = Phase::Serving;
                self.slot.preface_received();
            } else {
                self.phase = Phase::AwaitingPreface(left - bytes);
            }
        }
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.phase == Phase::Closed {
            return Poll::Ready(Ok(()));
        }
        // Registered before the signals are read, so that a signal sent after the reading
        // wakes this reader.
        this.slot.signals().reader.register(cx.waker());
        if this.slot.signals().is_displaced() {
            this.close();
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed at --max-connections to make room for a newer connection",
            )));
        }
        let before = buf.filled().len();
        if let Poll::Ready(result) = Pin::new(&mut this.stream).poll_read(cx, buf) {
            if result.is_ok() {
                this.received(buf.filled().len() - before);
            }
            return Poll::Ready(result);
        }
        // Nothing to read now: is the connection's time up?
        let Some(deadline) = this.deadline() else {
            return Poll::Pending;
        };
        if this.timer.deadline() != deadline {
            this.timer.as_mut().reset(deadline);
        }
        ready!(this.timer.as_mut().poll(cx));
        let phase = this.phase;
        this.close();
        if this.end_of_grace.is_some_and(|end| end <= deadline) {
            tracing::debug!("closing a connection past --max-connection-age and its grace");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "past --max-connection-age and its grace",
            )));
        }
        if let Phase::AwaitingPreface(_) = phase {
            tracing::debug!("closing a connection that sent no HTTP/2 preface in time");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within --handshake-timeout",
            )));
        }
        // Idle, and no request waiting to be read: the end of the stream makes hyper close
        // the connection as if the client had.
        tracing::debug!("closing an idle connection");
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        ConnectionInfo {
            tcp: self.stream.tcp_info(),
            signals: Arc::clone(self.slot.signals()),
            client: self.stream.client_identity(),
        }
    }
}
