//! The server span of every RPC, after the OpenTelemetry RPC semantic conventions: a
//! tower layer (tower-http's gRPC-aware [`TraceLayer`]) around both services.
//!
//! The span's parent is the W3C Trace Context (and baggage) of the call's metadata. It
//! carries `rpc.system=grpc`, `rpc.service`, `rpc.method`, `server.address`/`server.port`,
//! `network.peer.address`/`network.peer.port`, and `rpc.grpc.status_code` from the
//! response headers (an error) or the trailers (the end of a stream, or a unary OK); the
//! handlers add `reins.task.*` with [`record_task`]. A streaming call's span lasts as long
//! as its stream (a worker's `Connect` is one span, not one per message). Health checks and
//! reflection get no span: probes every few seconds would bury the traces that matter.
//!
//! With traces off, and for a call the sampler would drop anyway ([`super::may_sample`]),
//! the layer makes a disabled span ([`tracing::Span::none`]): nothing is recorded.

use std::time::Duration;

use http::HeaderMap;
use opentelemetry::global;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::SpanKind;
use tonic::transport::server::TcpConnectInfo;
use tower_http::classify::{GrpcErrorsAsFailures, SharedClassifier};
use tower_http::trace::{MakeSpan, OnEos, OnResponse, TraceLayer};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::task::{Task, TaskState};

/// The layer, ready for `Server::layer`.
pub type RpcTraceLayer =
    TraceLayer<SharedClassifier<GrpcErrorsAsFailures>, RpcSpan, (), RpcSpan, (), RpcSpan, ()>;

pub fn layer() -> RpcTraceLayer {
    TraceLayer::new_for_grpc()
        .make_span_with(RpcSpan)
        .on_request(())
        .on_response(RpcSpan)
        .on_body_chunk(())
        .on_eos(RpcSpan)
        .on_failure(())
}

/// Makes the span of a call and records its status.
#[derive(Clone, Copy, Debug)]
pub struct RpcSpan;

/// Services whose calls get no span.
const UNTRACED: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// `/package.Service/Method` → (`package.Service`, `Method`).
fn service_and_method(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

impl<B> MakeSpan<B> for RpcSpan {
    fn make_span(&mut self, request: &http::Request<B>) -> Span {
        if !super::enabled() {
            return Span::none();
        }
        let Some((service, method)) = service_and_method(request.uri().path()) else {
            return Span::none();
        };
        if UNTRACED.contains(&service) {
            return Span::none();
        }
        let name = request.uri().path().trim_start_matches('/');
        if !request.headers().contains_key("traceparent") && !super::roots_may_sample() {
            return Span::none();
        }
        let parent = global::get_text_map_propagator(|propagator| {
            propagator.extract(&Metadata(request.headers()))
        });
        if !super::may_sample(&parent, name, SpanKind::Server) {
            return Span::none();
        }
        let tcp = request.extensions().get::<TcpConnectInfo>();
        let local = tcp.and_then(|tcp| tcp.local_addr);
        let peer = tcp.and_then(|tcp| tcp.remote_addr);
        let span = tracing::info_span!(
            "grpc",
            otel.name = name,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            server.address = local.map(|a| a.ip().to_string()),
            server.port = local.map(|a| i64::from(a.port())),
            network.peer.address = peer.map(|a| a.ip().to_string()),
            network.peer.port = peer.map(|a| i64::from(a.port())),
            reins.task.id = tracing::field::Empty,
            reins.task.kind = tracing::field::Empty,
            reins.task.state = tracing::field::Empty,
        );
        let _ = span.set_parent(parent);
        span
    }
}

impl<B> OnResponse<B> for RpcSpan {
    fn on_response(self, response: &http::Response<B>, _: Duration, span: &Span) {
        // An error answer is "trailers only": the status is in the headers.
        record_status(response.headers(), span);
    }
}

impl OnEos for RpcSpan {
    fn on_eos(self, trailers: Option<&HeaderMap>, _: Duration, span: &Span) {
        if let Some(trailers) = trailers {
            record_status(trailers, span);
        }
    }
}

fn record_status(headers: &HeaderMap, span: &Span) {
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
    else {
        return;
    };
    span.record("rpc.grpc.status_code", i64::from(code));
    if is_server_error(tonic::Code::from_i32(code)) {
        span.record("otel.status_code", "ERROR");
    }
}

/// The codes that mark a server span as failed (the RPC semantic conventions): the rest
/// are the client's business.
fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
}

/// Reads W3C entries from gRPC metadata (HTTP/2 headers).
struct Metadata<'a>(&'a HeaderMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Records the task a call is about on the call's span (`reins.task.id`, `.kind`, and its
/// `.state` after the call). The one thing handlers do for traces.
pub fn record_task(task: &Task) {
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("reins.task.id", tracing::field::display(task.id));
    span.record("reins.task.kind", task.kind.as_str());
    span.record("reins.task.state", state_name(task.state));
}

/// The state as the API spells it.
pub fn state_name(state: TaskState) -> &'static str {
    match state {
        TaskState::Pending => "PENDING",
        TaskState::Running => "RUNNING",
        TaskState::WaitingForAnswer => "WAITING_FOR_ANSWER",
        TaskState::Completed => "COMPLETED",
        TaskState::Failed => "FAILED",
        TaskState::Cancelled => "CANCELLED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            service_and_method("/reins.v1.TaskService/StartTask"),
            Some(("reins.v1.TaskService", "StartTask"))
        );
        for bad in ["", "/", "//x", "/svc/", "svc/m", "/a/b/c"] {
            assert_eq!(service_and_method(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_server_side_codes_fail_the_span() {
        assert!(is_server_error(tonic::Code::Internal));
        assert!(is_server_error(tonic::Code::Unavailable));
        assert!(!is_server_error(tonic::Code::Ok));
        assert!(!is_server_error(tonic::Code::NotFound));
        assert!(!is_server_error(tonic::Code::InvalidArgument));
    }
}
