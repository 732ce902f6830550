//! The calls open on each connection, for `--idle-timeout`: [`CountCallsLayer`] sees every
//! call start and end, and tells its connection ([`Signals`]). A call is open from its
//! request until its response body is done or dropped, so a WatchTask or worker stream is
//! one long call. HTTP/2 PINGs and other frames never reach a service: they are no calls.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::connection::{ConnectionInfo, Signals};

/// The open calls of one connection, and since when it has had none.
#[derive(Debug)]
pub(super) struct Calls {
    open: usize,
    idle_since: Instant,
}

impl Default for Calls {
    fn default() -> Calls {
        Calls {
            open: 0,
            idle_since: Instant::now(),
        }
    }
}

impl Calls {
    pub(super) fn start(&mut self) {
        self.open += 1;
    }

    /// Returns whether the connection is idle now.
    pub(super) fn end(&mut self, now: Instant) -> bool {
        self.open -= 1;
        if self.open == 0 {
            self.idle_since = now;
        }
        self.open == 0
    }

    /// Since when no call is open; `None` while one is.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        (self.open == 0).then_some(self.idle_since)
    }
}

/// Counts each call on its connection (found in the request's extensions). It also puts the
/// connection's [`TcpConnectInfo`](tonic::transport::server::TcpConnectInfo) there, as
/// tonic does for plain TCP streams, so `Request::remote_addr` keeps working, and the
/// client certificate's [`ClientIdentity`](crate::tls::ClientIdentity) for the auth layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountCallsLayer;

impl<S> Layer<S> for CountCallsLayer {
    type Service = CountCalls<S>;

    fn layer(&self, inner: S) -> CountCalls<S> {
        CountCalls { inner }
    }
}

#[derive(Clone, Debug)]
pub struct CountCalls<S> {
    inner: S,
}

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for CountCalls<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<CountedBody<ResponseBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        let call = request
            .extensions()
            .get::<ConnectionInfo>()
            .cloned()
            .map(|info| {
                request.extensions_mut().insert(info.tcp);
                if let Some(client) = info.client {
                    request.extensions_mut().insert(client);
                }
                OpenCall::start(info.signals)
            });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| CountedBody { body, _call: call }))
        })
    }
}

/// A call in progress; ends when dropped.
struct OpenCall(Arc<Signals>);

impl OpenCall {
    fn start(signals: Arc<Signals>) -> OpenCall {
        signals.call_started();
        OpenCall(signals)
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.0.call_ended();
    }
}

/// A response body that keeps its call open until it is done or dropped.
pub struct CountedBody<B> {
    body: B,
    _call: Option<OpenCall>,
}

impl<B: Body + Unpin> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_connection_is_idle_from_the_end_of_its_last_call() {
        let mut calls = Calls::default();
        let opened = calls.idle_since().expect("idle when new");
        calls.start();
        calls.start();
        assert_eq!(calls.idle_since(), None);
        let later = opened + Duration::from_secs(5);
        assert!(!calls.end(later));
        assert_eq!(calls.idle_since(), None);
        let last = later + Duration::from_secs(5);
        assert!(calls.end(last));
        assert_eq!(calls.idle_since(), Some(last));
    }
}
