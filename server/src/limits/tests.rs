use std::time::{Duration, SystemTime};

use clap::Parser;
use proptest::prelude::*;
use prost::Message;
use reins_proto::json::{json_to_struct, json_to_value};
use reins_proto::v1 as pb;
use serde_json::json;

use super::*;
use crate::config::Config;
use crate::convert;
use crate::task::{CancelInfo, CancelMode, Task, TaskId, TaskState};

pub(crate) fn defaults() -> Limits {
    Config::try_parse_from(["reinsd"]).unwrap().limits
}

fn fields(violations: &[FieldViolation]) -> Vec<&str> {
    violations.iter().map(|v| v.field.as_str()).collect()
}

/// A string value whose protobuf encoding is `bytes` long at most, as long as it can be.
fn text_of_wire_len(bytes: usize) -> Json {
    let mut n = bytes;
    while wire_len(&json!("x".repeat(n))) > bytes {
        n -= 1;
    }
    json!("x".repeat(n))
}

#[test]
fn defaults_match_the_readme() {
    let limits = defaults();
    assert_eq!(limits.max_labels, 64);
    assert_eq!(limits.max_label_key_bytes, 128);
    assert_eq!(limits.max_label_value_bytes, 1024);
    assert_eq!(limits.max_id_bytes, 256);
    assert_eq!(limits.max_description_bytes, 4096);
    assert_eq!(limits.max_params_bytes, 1 << 20);
    assert_eq!(limits.max_params_depth, 32);
    assert_eq!(limits.max_result_bytes, 1 << 20);
    assert_eq!(limits.max_error_bytes, 16 << 10);
    assert_eq!(limits.max_question_bytes, 64 << 10);
    assert_eq!(limits.max_answer_bytes, 64 << 10);
    assert_eq!(limits.max_progress_message_bytes, 4096);
    assert_eq!(limits.max_reason_bytes, 1024);
}

#[test]
fn texts_are_accepted_at_the_limit_and_refused_one_byte_over() {
    let limits = defaults();
    let spec = |kind: String, description: String| NewTask {
        kind,
        description,
        ..NewTask::default()
    };
    assert!(
        limits
            .new_task(&spec("k".repeat(256), "d".repeat(4096)))
            .is_empty()
    );
    let violations = limits.new_task(&spec("k".repeat(257), "é".repeat(2049)));
    assert_eq!(fields(&violations), ["kind", "description"]);
    assert!(
        violations[0]
            .description
            .contains("at most 256 (--max-id-bytes)")
    );
    assert!(
        violations[1]
            .description
            .contains("4098 bytes; at most 4096 (--max-description-bytes)"),
        "bytes, not characters: {}",
        violations[1].description
    );
    assert!(limits.answer(&"a".repeat(64 << 10)).is_ok());
    assert!(limits.answer(&"a".repeat((64 << 10) + 1)).is_err());
    assert!(limits.reason(&"r".repeat(1025)).is_err());
    assert!(limits.hello(&"n".repeat(256), &["k".repeat(256)]).is_ok());
    assert!(limits.hello("w", &["k".repeat(257)]).is_err());
}

#[test]
fn labels_are_counted_and_measured() {
    let limits = defaults();
    let labels = |n: usize| {
        let labels = (0..n).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        NewTask {
            labels,
            ..NewTask::default()
        }
    };
    assert!(limits.new_task(&labels(64)).is_empty());
    let violations = limits.new_task(&labels(65));
    assert_eq!(fields(&violations), ["labels"]);
    assert!(
        violations[0]
            .description
            .contains("at most 64 (--max-labels)")
    );

    let mut spec = NewTask::default();
    spec.labels.insert("k".repeat(128), "v".repeat(1024));
    assert!(limits.new_task(&spec).is_empty());
    spec.labels.insert("long".to_owned(), "v".repeat(1025));
    spec.labels.insert("k".repeat(129), String::new());
    let violations = limits.new_task(&spec);
    assert_eq!(fields(&violations), ["labels", "labels.long"]);
    assert!(violations[0].description.contains("--max-label-key-bytes"));
    assert!(
        violations[1]
            .description
            .contains("--max-label-value-bytes")
    );
}

#[test]
fn params_are_bounded_in_depth_and_size() {
    let limits = defaults();
    let nested = |levels: usize| {
        let mut value = json!(1);
        for _ in 0..levels {
            value = json!({ "a": value });
        }
        NewTask {
            params: value.as_object().cloned().unwrap_or_default(),
            ..NewTask::default()
        }
    };
    assert!(limits.new_task(&nested(32)).is_empty());
    let violations = limits.new_task(&nested(33));
    assert_eq!(fields(&violations), ["params"]);
    assert!(
        violations[0]
            .description
            .contains("33 levels deep; at most 32")
    );

    let big = |extra: usize| {
        let mut params = JsonMap::new();
        params.insert("p".into(), json!("x".repeat(1000)));
        let base = object_wire_len(&params);
        params.insert("p".into(), json!("x".repeat(1000 + extra)));
        (
            base,
            NewTask {
                params,
                ..NewTask::default()
            },
        )
    };
    let (base, _) = big(0);
    let small = Limits {
        max_params_bytes: base + 1,
        ..limits
    };
    assert!(small.new_task(&big(1).1).is_empty(), "exactly at the limit");
    let violations = small.new_task(&big(2).1);
    assert_eq!(fields(&violations), ["params"]);
    assert!(violations[0].description.contains("--max-params-bytes"));
}

#[test]
fn reports_over_a_limit_name_it() {
    let limits = Limits {
        max_result_bytes: 100,
        ..defaults()
    };
    let fits = Report::Complete {
        result: text_of_wire_len(100),
    };
    assert_eq!(limits.report_violation(&fits), None);
    let over = Report::Stopped {
        result: json!("x".repeat(100)),
    };
    let why = limits.report_violation(&over).unwrap();
    assert!(why.contains("at most 100 (--max-result-bytes)"), "{why}");
    let ask = Report::Ask {
        question: "?".repeat((64 << 10) + 1),
        timeout: None,
    };
    assert!(
        limits
            .report_violation(&ask)
            .unwrap()
            .contains("--max-question-bytes")
    );
    let fail = Report::Fail {
        error: "e".repeat((16 << 10) + 1),
        result: None,
    };
    let why = limits.report_violation(&fail).unwrap();
    assert!(why.contains("--max-error-bytes"), "{why}");
    assert!(why.len() < 200, "the error is echoed only in part: {why}");
    let progress = Report::Progress {
        fraction: 0.5,
        message: "m".repeat(4097),
        partial_result: None,
        usage: Default::default(),
    };
    assert!(
        limits
            .report_violation(&progress)
            .unwrap()
            .contains("--max-progress-message-bytes")
    );
}

#[test]
fn wire_lengths_of_json_examples_match_prost() {
    for value in [
        json!(null),
        json!(false),
        json!(0),
        json!(""),
        json!("x".repeat(200)),
        json!([]),
        json!({}),
        json!({"": 1}),
        json!({"a": [1, 2.5, "three", null, {"b": {}}]}),
        json!(["y".repeat(20_000)]),
    ] {
        assert_eq!(
            wire_len(&value),
            json_to_value(&value).encoded_len(),
            "{value}"
        );
    }
}

fn json_value() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i32>().prop_map(|n| json!(n)),
        ".{0,300}".prop_map(Json::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Json::Array),
            prop::collection::btree_map(".{0,20}", inner, 0..8)
                .prop_map(|map| Json::Object(map.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn wire_lengths_match_prost(value in json_value()) {
        prop_assert_eq!(wire_len(&value), json_to_value(&value).encoded_len());
        if let Json::Object(object) = &value {
            prop_assert_eq!(object_wire_len(object), json_to_struct(object).encoded_len());
        }
    }
}

/// A record with every field at its limit (structured values at their byte limits).
/// The most W3C entries a record keeps (`telemetry::traces::MAX_TRACE_CONTEXT_BYTES`).
fn largest_trace_context() -> std::collections::BTreeMap<String, String> {
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let left = crate::telemetry::traces::MAX_TRACE_CONTEXT_BYTES
        - "traceparent".len()
        - parent.len()
        - "tracestate".len()
        - "baggage".len();
    [
        ("traceparent", parent.to_owned()),
        ("tracestate", "t".repeat(left / 2)),
        ("baggage", "b".repeat(left - left / 2)),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

fn record_at(limits: &Limits, checkpoints: CheckpointBudget) -> Task {
    let now = SystemTime::now();
    let id = |c: &str| c.repeat(limits.max_id_bytes);
    let mut params = JsonMap::new();
    params.insert("p".into(), text_of_wire_len(limits.max_params_bytes - 16));
    assert!(object_wire_len(&params) <= limits.max_params_bytes);
    let mut task = Task::new(
        TaskId::now_v7(),
        NewTask {
            kind: id("k"),
            description: "d".repeat(limits.max_description_bytes),
            params,
            parent_id: Some(TaskId::now_v7()),
            detached: true,
            session_id: id("s"),
            labels: (0..limits.max_labels)
                .map(|i| {
                    let key = format!("{i:0>width$}", width = limits.max_label_key_bytes);
                    (key, "v".repeat(limits.max_label_value_bytes))
                })
                .collect(),
            timeout: Some(Duration::from_secs(u32::MAX.into())),
            request_id: id("r"),
            max_attempts: u32::MAX,
            trace_context: largest_trace_context(),
            budget: (0..crate::task::budget::MAX_DIMENSIONS)
                .map(|i| (format!("{i:a>63}"), f64::MAX))
                .collect(),
            ancestors: Vec::new(),
            tenant: "t".repeat(crate::limits::MAX_TENANT_BYTES),
            created_by: "p".repeat(crate::limits::MAX_PRINCIPAL_BYTES),
        },
        now,
    );
    task.usage = task.budget.clone();
    task.subtree_usage = task.budget.clone();
    task.answer_timed_out = true;
    task.question_deadline = Some(now);
    task.state = TaskState::Failed;
    task.owner = id("o");
    task.worker = format!("{}/{}", id("w"), TaskId::now_v7());
    task.attempt = u32::MAX;
    task.version = u64::MAX;
    (task.started_at, task.finished_at) = (Some(now), Some(now));
    task.progress.fraction = 0.5;
    task.progress.message = "m".repeat(limits.max_progress_message_bytes);
    let each = checkpoints.bytes / checkpoints.count;
    task.partial_results =
        crate::task::Checkpoints::from_values(vec![text_of_wire_len(each); checkpoints.count]);
    task.result = Some(text_of_wire_len(limits.max_result_bytes));
    task.error = "e".repeat(limits.max_error_bytes);
    task.question = "q".repeat(limits.max_question_bytes);
    task.answer = "a".repeat(limits.max_answer_bytes);
    task.cancel = Some(CancelInfo {
        mode: CancelMode::Soft,
        reason: crate::task::cancel::ancestor_cancelled_reason(
            TaskId::now_v7(),
            &"r".repeat(limits.max_reason_bytes),
        ),
        requested_at: now,
        grace_deadline: Some(now),
        escalated: true,
        deadline_exceeded: true,
        origin: Default::default(),
        budget_exhausted: "b".repeat(crate::task::budget::MAX_DIMENSION_CHARS),
        requested_by: "p".repeat(crate::limits::MAX_PRINCIPAL_BYTES),
    });
    task
}

#[test]
fn a_record_at_every_limit_fits_its_bound_in_every_message_that_carries_it() {
    for limits in [
        defaults(),
        Limits {
            max_labels: 1000,
            max_label_key_bytes: 4,
            max_id_bytes: 1,
            max_params_bytes: 100,
            max_result_bytes: 200,
            ..defaults()
        },
    ] {
        for checkpoints in [
            CHECKPOINT_BUDGET,
            CheckpointBudget {
                count: 1,
                bytes: 10,
            },
        ] {
            let record = convert::task(&record_at(&limits, checkpoints));
            let time = Some(prost_types::Timestamp::from(SystemTime::now()));
            let event = pb::TaskEvent {
                task: Some(record.clone()),
                time,
                heartbeat: false,
            }
            .encoded_len();
            let cancel = pb::CancelResponse {
                task: Some(record.clone()),
                outcome: 4,
            }
            .encoded_len();
            let assign = pb::WorkerCommand {
                command: Some(pb::worker_command::Command::Assign(pb::TaskAssignment {
                    task: Some(record),
                    trace_context: largest_trace_context().into_iter().collect(),
                    budget_remaining: Default::default(),
                })),
            }
            .encoded_len();
            let bound = limits.record_bound(checkpoints);
            for (message, size) in [("event", event), ("cancel", cancel), ("assign", assign)] {
                assert!(size <= bound, "{message}: {size} > {bound} with {limits:?}");
            }
        }
    }
}

#[test]
fn the_defaults_fit_the_default_message_size_and_a_config_that_cannot_is_refused() {
    let limits = defaults();
    let bound = limits.record_bound(CHECKPOINT_BUDGET);
    // The README's arithmetic.
    assert_eq!(bound, 3_395_514);
    assert!(limits.check_fits(4 << 20, CHECKPOINT_BUDGET, "a").is_ok());
    let err = limits
        .check_fits(bound - 1, CHECKPOINT_BUDGET, "a")
        .unwrap_err();
    assert!(err.contains("--max-message-size"), "{err}");
    let err = limits
        .check_fits(4 << 20, CHECKPOINT_BUDGET, &"a".repeat(257))
        .unwrap_err();
    assert!(err.contains("--max-id-bytes"), "{err}");
}
