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
