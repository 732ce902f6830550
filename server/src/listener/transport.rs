//! [`Transport`]: what a [`super::Connection`] reads and writes, plain TCP or TLS over it,
//! and [`handshake`], which turns an accepted socket into a TLS one (with the certificate
//! current at that moment) within the connection's `--handshake-timeout`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::ConnectionLimits;
use super::connection::Connection;
use super::slots::Slot;
use crate::tls::{ClientIdentity, ServerTls, identity};

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    pub(super) fn tcp_info(&self) -> TcpConnectInfo {
        match self {
            Transport::Plain(tcp) => tcp.connect_info(),
            Transport::Tls(tls) => tls.get_ref().0.connect_info(),
        }
    }

    /// The identity of the client's certificate, when it presented one (mTLS).
    pub(super) fn client_identity(&self) -> Option<ClientIdentity> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(tls) => {
                let chain = tls.get_ref().1.peer_certificates()?;
                identity::of_certificate(chain.first()?)
            }
        }
    }
}

/// The TLS handshake of a connection accepted at `accepted`: `None` when it fails, takes
/// past the connection's handshake deadline, or the connection is displaced meanwhile.
pub(super) async fn handshake(
    tls: Arc<ServerTls>,
    stream: TcpStream,
    slot: Slot,
    limits: ConnectionLimits,
    accepted: Instant,
) -> Option<Connection> {
    let signals = Arc::clone(slot.signals());
    let displaced = std::future::poll_fn(|cx| signals.poll_displaced(cx));
    tokio::select! {
        result = tls.acceptor().accept(stream) => match result {
            Ok(stream) => Some(Connection::new(
                Transport::Tls(Box::new(stream)),
                slot,
                &limits,
                accepted,
            )),
            Err(err) => {
                tracing::debug!(%err, "TLS handshake failed");
                None
            }
        },
        () = tokio::time::sleep_until(accepted + limits.handshake_timeout) => {
            tracing::debug!("closing a connection that did not finish its TLS handshake in time");
            None
        }
        () = displaced => None,
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(tcp) => tcp.is_write_vectored(),
            Transport::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
