//! The HTTP endpoint of `--metrics-listen`: `GET /metrics` (the Prometheus text format, or
//! OpenMetrics when the scraper's `Accept` asks for it, as Prometheus does), `GET /healthz`
//! (liveness: the process answers; never depends on the store) and `GET /readyz` (200 when
//! [`Readiness`] says ready, 503 otherwise), for tools that cannot speak gRPC health.
//!
//! Served by axum (already in the tree through tonic) over HTTP/1.1. Values that live
//! elsewhere are read once per scrape, before encoding: the queue depth (one cheap store
//! read, bounded by [`DEPTH_TIMEOUT`]; on failure the gauge keeps its last value and the
//! store's error counter tells why) and the workers connected here.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::{prometheus_text, text};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{WorkerKindOccupancy, metrics};
use crate::readiness::Readiness;
use crate::store::TaskQueue;

/// How long a scrape waits for the queue depth.
const DEPTH_TIMEOUT: Duration = Duration::from_millis(500);
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the endpoints read besides the registry.
#[derive(Clone)]
pub(crate) struct Sources {
    pub readiness: Arc<Readiness>,
    pub queue: Arc<dyn TaskQueue>,
    /// The workers connected to this replica, per kind.
    pub workers: Arc<dyn Fn() -> Vec<WorkerKindOccupancy> + Send + Sync>,
}

/// Serves the endpoints on `listener` until `stop` is cancelled (the end of shutdown, so
/// `/readyz` says "not ready" while the replica drains).
pub(crate) fn spawn(listener: TcpListener, sources: Sources, stop: CancellationToken) {
    tokio::spawn(async move {
        if let Err(err) = serve(listener, sources, stop).await {
            tracing::error!(%err, "the metrics endpoint stopped");
        }
    });
}

async fn serve(
    listener: TcpListener,
    sources: Sources,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(sources);
    axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

async fn ready(State(sources): State<Sources>) -> impl IntoResponse {
    if sources.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn scrape(State(sources): State<Sources>, headers: HeaderMap) -> impl IntoResponse {
    let metrics = metrics();
    if let Ok(Ok(depth)) = tokio::time::timeout(DEPTH_TIMEOUT, sources.queue.queue_depth()).await {
        metrics.set_queue_depth(depth);
    }
    metrics.set_workers(&(sources.workers)());
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.contains("application/openmetrics-text"));
    let mut body = String::new();
    let (encoded, content_type) = if openmetrics {
        (text::encode(&mut body, &metrics.registry), OPENMETRICS)
    } else {
        (
            prometheus_text::encode(&mut body, &metrics.registry),
            prometheus_text::CONTENT_TYPE,
        )
    };
    match encoded {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body),
        // Writing into a String fails only if a metric's own encoding does.
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "the metrics could not be encoded\n".to_owned(),
        ),
    }
}
