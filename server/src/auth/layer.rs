//! [`AuthLayer`]: the tower layer that runs [`Auth::admit`] on every call before any
//! service sees it, answers refused calls itself, and puts the [`Caller`] of admitted ones
//! in the request's extensions.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, FutureExt};
use tower::{Layer, Service};

use super::Auth;
use crate::tls::ClientIdentity;

#[derive(Clone)]
pub(crate) struct AuthLayer {
    auth: Arc<Auth>,
}

impl AuthLayer {
    pub(crate) fn new(auth: Arc<Auth>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            auth: Arc::clone(&self.auth),
            inner,
        }
    }
}

#[derive(Clone)]
pub(crate) struct Authenticated<S> {
    auth: Arc<Auth>,
    inner: S,
}

impl<S, RequestBody> Service<http::Request<RequestBody>> for Authenticated<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        let admitted = self.auth.admit(
            request.uri().path(),
            request.headers(),
            request.extensions().get::<ClientIdentity>(),
        );
        match admitted {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                self.inner.call(request).boxed()
            }
            Err(err) => {
                let response = tonic::Status::from(err).into_http();
                std::future::ready(Ok(response)).boxed()
            }
        }
    }
}
