use std::collections::{BTreeMap, HashMap};

use super::*;

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.get(name).cloned()
}

#[test]
fn export_needs_an_endpoint_and_no_opt_out() {
    assert!(!wanted(env(&[])));
    assert!(!wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
    assert!(wanted(env(&[(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "http://127.0.0.1:4317"
    )])));
    assert!(wanted(env(&[(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "http://127.0.0.1:4317"
    )])));
    assert!(!wanted(env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
        ("OTEL_SDK_DISABLED", "TRUE"),
    ])));
    assert!(!wanted(env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
        ("OTEL_TRACES_EXPORTER", "none"),
    ])));
}

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn entries(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_trace_id_comes_from_a_valid_traceparent_only() {
    assert_eq!(
        trace_id(&entries(&[("traceparent", PARENT)])).as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(trace_id(&BTreeMap::new()), None);
    assert_eq!(trace_id(&entries(&[("traceparent", "00-zz-00-01")])), None);
    // The all-zero trace id is invalid.
    let zero = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    assert_eq!(trace_id(&entries(&[("traceparent", zero)])), None);
}

#[test]
fn entries_round_trip_through_a_context() {
    global::set_text_map_propagator(propagator());
    let given = entries(&[
        ("traceparent", PARENT),
        ("tracestate", "vendor=value"),
        ("baggage", "tenant=acme"),
    ]);
    assert_eq!(to_map(&from_map(&given)), given);
}

#[test]
fn oversized_context_drops_baggage_then_tracestate() {
    let big = "x".repeat(MAX_TRACE_CONTEXT_BYTES);
    let small = entries(&[("traceparent", PARENT), ("baggage", "a=b")]);
    assert_eq!(bounded(small.clone()), small);
    let kept = bounded(entries(&[
        ("traceparent", PARENT),
        ("tracestate", "vendor=value"),
        ("baggage", &big),
    ]));
    assert_eq!(
        kept,
        entries(&[("traceparent", PARENT), ("tracestate", "vendor=value")])
    );
    let kept = bounded(entries(&[
        ("traceparent", PARENT),
        ("tracestate", &big),
        ("baggage", &big),
    ]));
    assert_eq!(kept, entries(&[("traceparent", PARENT)]));
}

#[test]
fn only_spans_that_could_be_sampled_are_made() {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceState};
    use opentelemetry_sdk::trace::Sampler;

    let root = Context::new();
    let under = |flags| {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(0x4bf9_u128 << 64 | 0xffff_ffff_ffff_ffff),
            SpanId::from(7u64),
            flags,
            true,
            TraceState::default(),
        ))
    };
    let sampled = under(TraceFlags::SAMPLED);
    let unsampled = under(TraceFlags::default());
    let check = |sampler: Sampler, parent: &Context| {
        could_sample(&sampler, parent, "s/m", SpanKind::Server)
    };
    let ratio = |p| Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(p)));

    // Roots: skipped only when no trace id could ever be kept.
    assert!(check(ratio(0.000_001), &root));
    assert!(!check(ratio(0.0), &root));
    assert!(!check(Sampler::AlwaysOff, &root));
    assert!(check(
        Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        &root
    ));
    // Under a parent: the parent-based sampler follows it, exactly.
    assert!(check(ratio(0.0), &sampled));
    assert!(!check(ratio(1.0), &unsampled));
    // A ratio sampler that ignores the parent decides by the parent's trace id (whose low
    // bits, all ones, are kept by no ratio below 1).
    assert!(!check(Sampler::TraceIdRatioBased(0.5), &sampled));
}
