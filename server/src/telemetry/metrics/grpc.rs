//! gRPC server metrics with the names and labels of go-grpc-prometheus (grpc-ecosystem),
//! so existing dashboards and alerts work: `grpc_server_started_total`,
//! `grpc_server_handled_total`, `grpc_server_msg_received_total`,
//! `grpc_server_msg_sent_total` and `grpc_server_handling_seconds`, labelled
//! `grpc_service`, `grpc_method`, `grpc_type` (and `grpc_code` once handled).
//!
//! [`GrpcMetricsLayer`] wraps every service at the HTTP level. The method table comes from
//! the services' file descriptor sets, so `grpc_type` is what the proto declares and a
//! path no service has (a client's typo, a scanner) is labelled `unknown` rather than
//! growing the label set. Messages are counted by their gRPC length prefixes as the bodies
//! go by; a call is handled when its `grpc-status` is sent (in the headers of a
//! trailers-only answer, or in the trailers at the end of a stream), or, if its response
//! is dropped before that (the client went away), with code `Canceled`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use prost::Message;
use tonic::Code;
use tower::{Layer, Service};

use super::{Histograms, histograms, metrics};

/// go-grpc-prometheus's default buckets for `grpc_server_handling_seconds`.
const HANDLING_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `grpc_type` label values, as the proto declares the method.
fn rpc_type(client_streaming: bool, server_streaming: bool) -> &'static str {
    match (client_streaming, server_streaming) {
        (false, false) => "unary",
        (true, false) => "client_stream",
        (false, true) => "server_stream",
        (true, true) => "bidi_stream",
    }
}

/// The `grpc_code` label of a status code: the Go names, which dashboards use.
fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct MethodLabels {
    grpc_service: &'static str,
    grpc_method: &'static str,
    grpc_type: &'static str,
}

const UNKNOWN: MethodLabels = MethodLabels {
    grpc_service: "unknown",
    grpc_method: "unknown",
    grpc_type: "unknown",
};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    #[prometheus(flatten)]
    method: MethodLabels,
    grpc_code: &'static str,
}

pub(super) struct GrpcMetrics {
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    received: Family<MethodLabels, Counter>,
    sent: Family<MethodLabels, Counter>,
    handling: Histograms<MethodLabels>,
}

impl GrpcMetrics {
    pub(super) fn register(registry: &mut Registry) -> GrpcMetrics {
        let metrics = GrpcMetrics {
            started: Family::default(),
            handled: Family::default(),
            received: Family::default(),
            sent: Family::default(),
            handling: histograms(|| Histogram::new(HANDLING_BUCKETS)),
        };
        registry.register(
            "grpc_server_started",
            "Total number of RPCs started on the server",
            metrics.started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            metrics.handled.clone(),
        );
        registry.register(
            "grpc_server_msg_received",
            "Total number of RPC stream messages received on the server",
            metrics.received.clone(),
        );
        registry.register(
            "grpc_server_msg_sent",
            "Total number of gRPC stream messages sent by the server",
            metrics.sent.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
            metrics.handling.clone(),
        );
        metrics
    }

    /// The series of one method, at 0 (as go-grpc-prometheus makes them, so that `rate()`
    /// sees the first call).
    fn series(&self, labels: MethodLabels) -> Method {
        Method {
            labels,
            started: self.started.get_or_create_owned(&labels),
            received: self.received.get_or_create_owned(&labels),
            sent: self.sent.get_or_create_owned(&labels),
            handling: self.handling.get_or_create_owned(&labels),
        }
    }
}

/// A served method and its series, looked up once: a call touches no map but for its
/// code.
#[derive(Debug)]
struct Method {
    labels: MethodLabels,
    started: Counter,
    received: Counter,
    sent: Counter,
    handling: Histogram,
}

/// The methods of the served services, by HTTP/2 path (`/package.Service/Method`).
#[derive(Debug)]
struct Methods {
    by_path: HashMap<String, Arc<Method>>,
    /// A path no service has.
    unknown: Arc<Method>,
}

impl Methods {
    /// The labels of every method of every service in the encoded file descriptor sets.
    /// Their names live as long as the process, as label values must.
    fn labels_of(sets: &[&[u8]]) -> HashMap<String, MethodLabels> {
        let mut by_path = HashMap::new();
        for set in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                continue;
            };
            for file in set.file {
                let package = file.package();
                for service in &file.service {
                    let name = match package {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    let grpc_service: &'static str = Box::leak(name.into_boxed_str());
                    for method in &service.method {
                        let grpc_method: &'static str =
                            Box::leak(method.name().to_owned().into_boxed_str());
                        by_path.insert(
                            format!("/{grpc_service}/{grpc_method}"),
                            MethodLabels {
                                grpc_service,
                                grpc_method,
                                grpc_type: rpc_type(
                                    method.client_streaming(),
                                    method.server_streaming(),
                                ),
                            },
                        );
                    }
                }
            }
        }
        by_path
    }

    fn new(sets: &[&[u8]], grpc: &GrpcMetrics) -> Methods {
        let by_path = Methods::labels_of(sets)
            .into_iter()
            .map(|(path, labels)| (path, Arc::new(grpc.series(labels))))
            .collect();
        Methods {
            by_path,
            unknown: Arc::new(grpc.series(UNKNOWN)),
        }
    }

    fn get(&self, path: &str) -> &Arc<Method> {
        self.by_path.get(path).unwrap_or(&self.unknown)
    }
}

/// Records the gRPC server metrics of every call (see the module doc).
#[derive(Clone, Debug)]
pub(crate) struct GrpcMetricsLayer {
    methods: Arc<Methods>,
}

impl GrpcMetricsLayer {
    /// For the services described by these encoded file descriptor sets.
    pub fn for_services(descriptor_sets: &[&[u8]]) -> GrpcMetricsLayer {
        GrpcMetricsLayer {
            methods: Arc::new(Methods::new(descriptor_sets, &metrics().grpc)),
        }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> GrpcMetricsService<S> {
        GrpcMetricsService {
            inner,
            methods: Arc::clone(&self.methods),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct GrpcMetricsService<S> {
    inner: S,
    methods: Arc<Methods>,
}

impl<S, ResponseBody> Service<http::Request<tonic::body::Body>> for GrpcMetricsService<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<MeteredBody<ResponseBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let method = Arc::clone(self.methods.get(request.uri().path()));
        let mut call = Call::start(Arc::clone(&method));
        let request = match method.labels.grpc_type {
            // A request of one message is counted as it comes, its body left as it is.
            "unary" | "server_stream" => {
                method.received.inc();
                request
            }
            _ => request.map(|body| {
                tonic::body::Body::new(MeteredBody {
                    body,
                    messages: MessageCounter::default(),
                    count: method.received.clone(),
                    call: None,
                })
            }),
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if let Some(code) = response.headers().get("grpc-status") {
                // A trailers-only answer: the status is in the headers.
                call.handled(Code::from_bytes(code.as_bytes()));
            }
            Ok(response.map(|body| MeteredBody {
                body,
                messages: MessageCounter::default(),
                count: method.sent.clone(),
                call: Some(call),
            }))
        })
    }
}

/// One call from its request to its status.
struct Call {
    method: Arc<Method>,
    started: Instant,
    handled: bool,
}

impl Call {
    fn start(method: Arc<Method>) -> Call {
        method.started.inc();
        Call {
            method,
            started: Instant::now(),
            handled: false,
        }
    }

    fn handled(&mut self, code: Code) {
        if std::mem::replace(&mut self.handled, true) {
            return;
        }
        metrics()
            .grpc
            .handled
            .get_or_create(&HandledLabels {
                method: self.method.labels,
                grpc_code: code_label(code),
            })
            .inc();
        self.method
            .handling
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // The answer was dropped before its status went out: the client went away.
        self.handled(Code::Cancelled);
    }
}

/// Counts the length-prefixed messages of a gRPC body as its bytes go by: each message is
/// a 1-byte flag, a 4-byte big-endian length and that many bytes.
#[derive(Debug, Default)]
struct MessageCounter {
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
}

impl MessageCounter {
    /// How many messages begin in `bytes` (a message counts once its prefix is complete).
    fn feed(&mut self, mut bytes: &[u8]) -> u64 {
        let mut begun = 0;
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(bytes.len());
                self.remaining -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (5 - self.prefix_len).min(bytes.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&bytes[..take]);
            self.prefix_len += take;
            bytes = &bytes[take..];
            if self.prefix_len == 5 {
                begun += 1;
                let [_, a, b, c, d] = self.prefix;
                self.remaining = u32::from_be_bytes([a, b, c, d]) as usize;
                self.prefix_len = 0;
            }
        }
        begun
    }
}

/// A request or response body whose messages are counted; a response body also ends its
/// call when its trailers carry the status (or when it is dropped).
pub struct MeteredBody<B> {
    body: B,
    messages: MessageCounter,
    count: Counter,
    call: Option<Call>,
}

impl<B> Body for MeteredBody<B>
where
    B: Body + Unpin,
    B::Data: AsRef<[u8]>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame {
            if let Some(data) = frame.data_ref() {
                let begun = this.messages.feed(data.as_ref());
                if begun > 0 {
                    this.count.inc_by(begun);
                }
            } else if let (Some(trailers), Some(call)) = (frame.trailers_ref(), &mut this.call)
                && let Some(code) = trailers.get("grpc-status")
            {
                call.handled(Code::from_bytes(code.as_bytes()));
            }
        }
        frame
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
    use super::*;

    fn message(len: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7, len as usize));
        bytes
    }

    #[test]
    fn messages_are_counted_however_the_bytes_are_split() {
        let stream: Vec<u8> = [message(3), message(0), message(300), message(1)].concat();
        for chunk in [1, 2, 4, 5, 6, 7, 64, stream.len()] {
            let mut counter = MessageCounter::default();
            let total: u64 = stream.chunks(chunk).map(|bytes| counter.feed(bytes)).sum();
            assert_eq!(total, 4, "chunks of {chunk}");
            assert_eq!(counter.remaining, 0);
            assert_eq!(counter.prefix_len, 0);
        }
    }

    #[test]
    fn a_message_counts_once_its_prefix_is_complete() {
        let mut counter = MessageCounter::default();
        assert_eq!(counter.feed(&[0, 0, 0]), 0);
        assert_eq!(counter.feed(&[0, 2]), 1);
        assert_eq!(counter.feed(&[1]), 0);
        assert_eq!(counter.feed(&[1]), 0);
        assert_eq!(counter.feed(&message(0)), 1);
    }

    #[test]
    fn the_method_table_has_the_declared_stream_types() {
        let methods = Methods::labels_of(&[
            reins_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ]);
        let labels = |path: &str| methods.get(path).copied().unwrap_or(UNKNOWN);
        let watch = labels("/reins.v1.TaskService/WatchTask");
        assert_eq!(
            (watch.grpc_service, watch.grpc_method, watch.grpc_type),
            ("reins.v1.TaskService", "WatchTask", "server_stream")
        );
        assert_eq!(labels("/reins.v1.TaskService/StartTask").grpc_type, "unary");
        assert_eq!(
            labels("/reins.v1.WorkerService/Connect").grpc_type,
            "bidi_stream"
        );
        assert_eq!(
            labels("/grpc.health.v1.Health/Watch").grpc_type,
            "server_stream"
        );
        assert_eq!(labels("/reins.v1.TaskService/Nope"), UNKNOWN);
    }
}
