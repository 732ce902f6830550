//! Trace propagation: every call of [`crate::Client`] carries the caller's OpenTelemetry
//! context as W3C Trace Context (`traceparent`, `tracestate`) and `baggage` metadata, so
//! the server's span of the call (and the task it starts) joins the caller's trace.
//!
//! The entries are written by the application's global propagator
//! (`opentelemetry::global::set_text_map_propagator`) from the current context (with
//! `tracing-opentelemetry`, the entered span's); without one nothing is added. The `reins`
//! CLI sets the W3C propagators and joins the trace named by `$TRACEPARENT` (with
//! `$TRACESTATE`, `$BAGGAGE`), the environment-variable carrier tools such as `otel-cli`
//! use: [`join_environment_trace`].

use std::collections::HashMap;

use opentelemetry::propagation::{Injector, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{ContextGuard, global};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tonic::metadata::{MetadataKey, MetadataMap};

/// `message` as a request carrying the current context.
pub(crate) fn traced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    global::get_text_map_propagator(|propagator| {
        propagator.inject(&mut Metadata(request.metadata_mut()));
    });
    request
}

/// Writes propagated entries into gRPC metadata (skipping any that is not a valid header,
/// which no W3C entry is).
struct Metadata<'a>(&'a mut MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (MetadataKey::from_bytes(key.as_bytes()), value.parse()) {
            self.0.insert(key, value);
        }
    }
}

/// Installs the W3C propagators and, when `$TRACEPARENT` names a valid span, makes it the
/// current context until the guard is dropped: the calls made meanwhile (on this thread)
/// are its children. For command-line tools; a library leaves both to its application.
pub fn join_environment_trace() -> Option<ContextGuard> {
    let propagator = TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]);
    let carrier: HashMap<String, String> = [
        ("traceparent", "TRACEPARENT"),
        ("tracestate", "TRACESTATE"),
        ("baggage", "BAGGAGE"),
    ]
    .into_iter()
    .filter_map(|(key, var)| Some((key.to_owned(), std::env::var(var).ok()?)))
    .collect();
    let cx = propagator.extract(&carrier);
    global::set_text_map_propagator(propagator);
    cx.span()
        .span_context()
        .is_valid()
        .then(|| cx.clone().attach())
}
