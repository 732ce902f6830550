//! OpenTelemetry traces, configured only by the standard environment variables:
//!
//! | variable | effect |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT` | where spans go (OTLP over gRPC); neither set → no exporter and no spans at all |
//! | `OTEL_SERVICE_NAME` | `service.name` (default `reinsd`) |
//! | `OTEL_RESOURCE_ATTRIBUTES` | more resource attributes (`service.instance.id` defaults to the replica id) |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | the sampler (default `parentbased_always_on`) |
//! | `OTEL_TRACES_EXPORTER=none`, `OTEL_SDK_DISABLED=true` | no traces, whatever the endpoint |
//! | `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, `…_HEADERS` | the batch processor and exporter, as the SDK reads them |
//!
//! Spans are exported in batches from the SDK's own thread: an RPC only appends to a
//! bounded queue (spans beyond it are dropped), so a slow or unreachable collector never
//! holds a call; a failing export is logged as a warning at most once a minute
//! ([`quiet::Quiet`]). [`Traces::shut_down`] flushes what is queued (at most 3 s).
//!
//! The context travels as W3C Trace Context (`traceparent`, `tracestate`) and `baggage`:
//! read from each call's metadata ([`grpc`]), kept on the task record as a string map
//! ([`current_context`]), handed to workers in their assignments, and the parent of the
//! task's execution span ([`task`]).

pub mod grpc;
mod quiet;
pub mod task;

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{SpanKind, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{Config, SamplingDecision, SdkTracerProvider, ShouldSample};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The name of the tracer (instrumentation scope) of every span the server makes.
const SCOPE: &str = "reinsd";

/// The sampler of the installed provider (the same `OTEL_TRACES_SAMPLER`), set once when an
/// exporter was configured; unset, no span is made at all. Checked first by everything that
/// makes a span, so a server without traces pays one load.
static SAMPLING: OnceLock<Sampling> = OnceLock::new();

struct Sampling {
    sampler: Box<dyn ShouldSample>,
    /// Whether a root (a call without a parent) could be sampled: the same answer for
    /// every root, so decided once.
    roots: bool,
}

pub fn enabled() -> bool {
    SAMPLING.get().is_some()
}

/// Whether a span without a parent could be sampled (see [`may_sample`]).
pub fn roots_may_sample() -> bool {
    SAMPLING.get().is_some_and(|sampling| sampling.roots)
}

/// Whether a span under `parent` could be sampled: the server makes no span otherwise,
/// since a span nobody records costs as much to make (and to carry through `tracing`) as
/// one that is recorded. Under a parent the sampler decides exactly (the span takes the
/// parent's trace id); for a root it decides with the trace id the ratio samplers are most
/// inclined to keep, so only a root that could never be sampled (`always_off`, a ratio of
/// 0) is skipped and the SDK still decides for the others.
pub fn may_sample(parent: &Context, name: &str, kind: SpanKind) -> bool {
    SAMPLING.get().is_some_and(|sampling| {
        if parent.span().span_context().is_valid() {
            could_sample(sampling.sampler.as_ref(), parent, name, kind)
        } else {
            sampling.roots
        }
    })
}

fn could_sample(sampler: &dyn ShouldSample, parent: &Context, name: &str, kind: SpanKind) -> bool {
    let span = parent.span();
    let context = span.span_context();
    // A ratio sampler keeps a trace id whose low 63 bits are under its bound: 1 is kept by
    // every ratio above 0.
    let trace_id = if context.is_valid() {
        context.trace_id()
    } else {
        TraceId::from(1u128)
    };
    sampler
        .should_sample(Some(parent), trace_id, name, &kind, &[], &[])
        .decision
        != SamplingDecision::Drop
}

/// How long a stopping server waits for its last spans to be exported.
const FLUSH_AT_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(3);

/// The installed tracer provider, flushed and stopped by [`Traces::shut_down`].
pub struct Traces {
    provider: Option<SdkTracerProvider>,
}

/// Whether the environment asks for trace export: an OTLP endpoint is set, and neither
/// `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` says otherwise.
fn wanted(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).is_some_and(|value| !value.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let no_exporter =
        var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    (set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        && !disabled
        && !no_exporter
}

impl Traces {
    /// No traces.
    pub fn off() -> Traces {
        Traces { provider: None }
    }

    /// Sets up export as the environment says, and the `tracing` layer that turns the
    /// server's spans into OpenTelemetry spans (`None`: traces are off). Must run inside
    /// the Tokio runtime (the gRPC channel of the exporter lives there).
    pub fn from_env<S>(
        replica_id: &str,
    ) -> Result<(Traces, Option<impl tracing_subscriber::Layer<S> + use<S>>), String>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        // Extraction and injection use the W3C propagators even without export, so the
        // helpers below behave the same whatever the configuration.
        global::set_text_map_propagator(propagator());
        if !wanted(|name| std::env::var(name).ok()) {
            return Ok((Traces::off(), None));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|err| format!("OTLP trace exporter: {err}"))?;
        // The provider's own sampler is this same default, read from the environment.
        let sampler = Config::default().sampler;
        let provider = SdkTracerProvider::builder()
            .with_resource(resource(replica_id))
            .with_batch_exporter(quiet::Quiet::new(exporter))
            .build();
        global::set_tracer_provider(provider.clone());
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(SCOPE))
            // Only spans: the server's log lines stay in the log.
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            // The server reads a span's context only through the span itself (never
            // `Context::current()`): activating it on every poll of every call is cost
            // without use.
            .with_context_activation(false);
        let roots = could_sample(sampler.as_ref(), &Context::new(), SCOPE, SpanKind::Server);
        let _ = SAMPLING.set(Sampling { sampler, roots });
        Ok((
            Traces {
                provider: Some(provider),
            },
            Some(layer),
        ))
    }

    /// Exports what is still queued and stops the exporter, waiting at most
    /// [`FLUSH_AT_SHUTDOWN`] for an unresponsive collector.
    pub fn shut_down(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown_with_timeout(FLUSH_AT_SHUTDOWN)
        {
            tracing::warn!(%err, "traces not flushed at shutdown");
        }
    }
}

/// The resource of every span: the environment's (`OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`), with `service.name` defaulting to `reinsd`, and
/// `service.version` and `service.instance.id` (the replica id) unless given there.
fn resource(replica_id: &str) -> Resource {
    let given = |key: &'static str| {
        std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|attrs| {
            attrs
                .split(',')
                .any(|pair| pair.split('=').next().is_some_and(|k| k.trim() == key))
        })
    };
    let mut builder = Resource::builder();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|name| !name.is_empty())
        || given("service.name");
    if !named {
        builder = builder.with_service_name(SCOPE);
    }
    for (key, value) in [
        ("service.version", env!("CARGO_PKG_VERSION")),
        ("service.instance.id", replica_id),
    ] {
        if !given(key) {
            builder = builder.with_attribute(KeyValue::new(key, value.to_owned()));
        }
    }
    builder.build()
}

fn propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// The context of the current span as W3C Trace Context (and baggage) entries: what a task
/// record keeps and an assignment carries. Empty when the call has no span (traces off, or
/// not sampled).
pub fn current_context() -> BTreeMap<String, String> {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return BTreeMap::new();
    }
    bounded(to_map(&span.context()))
}

/// The most bytes of W3C entries a record keeps (keys and values): the `traceparent` (55)
/// always; `tracestate` and then `baggage` only while they fit.
pub const MAX_TRACE_CONTEXT_BYTES: usize = 1024;

fn bounded(mut entries: BTreeMap<String, String>) -> BTreeMap<String, String> {
    let size = |entries: &BTreeMap<String, String>| {
        entries
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
    };
    for optional in ["baggage", "tracestate"] {
        if size(&entries) <= MAX_TRACE_CONTEXT_BYTES {
            break;
        }
        entries.remove(optional);
    }
    entries
}

fn to_map(cx: &Context) -> BTreeMap<String, String> {
    let mut carrier = HashMap::new();
    global::get_text_map_propagator(|propagator| propagator.inject_context(cx, &mut carrier));
    carrier.into_iter().collect()
}

/// The context that W3C entries (a task record's) describe; empty if they describe none.
pub fn from_map(entries: &BTreeMap<String, String>) -> Context {
    let carrier: HashMap<String, String> = entries
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    global::get_text_map_propagator(|propagator| propagator.extract(&carrier))
}

/// The trace id (32 lowercase hex digits) in W3C entries, if they hold a valid
/// `traceparent`: the one a user pastes into a tracing UI.
pub fn trace_id(entries: &BTreeMap<String, String>) -> Option<String> {
    let carrier: HashMap<String, String> = entries
        .get("traceparent")
        .map(|value| ("traceparent".to_owned(), value.clone()))
        .into_iter()
        .collect();
    let cx = TraceContextPropagator::new().extract(&carrier);
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| context.trace_id().to_string())
}

#[cfg(test)]
mod tests;
