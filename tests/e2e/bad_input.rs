//! Bad input, RPC by RPC: every malformed or impossible request gets the right status code
//! with google.rpc details (an `ErrorInfo` reason and, for field errors, a `BadRequest`
//! naming each bad field), and the server keeps serving afterwards.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::future::Future;

use prost_types::value::Kind;
use reins_client::proto::{
    AnswerTaskRequest, CancelOutcome, HardCancelRequest, ListActiveRequest, SoftCancelRequest,
    StartTaskRequest, TaskState, WatchTaskRequest,
};
use reins_client::{Client, StartTask, WatchOptions};
use reins_e2e::{Reinsd, bad_fields, reason, sleep_params, start_sleep, wait_finished, wait_state};
use serde_json::json;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// A well-formed task id that no server has issued.
const UNKNOWN_ID: &str = "01930000-0000-7000-8000-000000000000";
/// Task ids that are not UUIDs at all.
const MALFORMED_IDS: [&str; 3] = ["", "123", "not-a-uuid"];

/// The status a bad request must get back.
#[derive(Debug)]
struct Expect {
    code: Code,
    /// The `ErrorInfo.reason` (domain `reins.v1`); `None`: no `ErrorInfo` is required.
    reason: Option<&'static str>,
    /// The fields of the `BadRequest`, in any order; empty: no `BadRequest`.
    fields: Vec<&'static str>,
}

/// INVALID_ARGUMENT naming exactly `fields`.
fn invalid(fields: &[&'static str]) -> Expect {
    Expect {
        code: Code::InvalidArgument,
        reason: Some("INVALID_ARGUMENT"),
        fields: fields.to_vec(),
    }
}

fn refused(code: Code, reason: &'static str) -> Expect {
    Expect {
        code,
        reason: Some(reason),
        fields: Vec::new(),
    }
}

fn task_not_found() -> Expect {
    refused(Code::NotFound, "TASK_NOT_FOUND")
}

fn sorted(mut fields: Vec<String>) -> Vec<String> {
    fields.sort();
    fields
}

/// Asserts that `result` is the error `expect` describes; returns the status.
fn assert_refused<T: Debug>(case: &str, result: Result<T, Status>, expect: &Expect) -> Status {
    let status = match result {
        Ok(value) => panic!(
            "{case}: expected {:?}, got a success: {value:?}",
            expect.code
        ),
        Err(status) => status,
    };
    assert_eq!(status.code(), expect.code, "{case}: {status:?}");
    if let Some(expected_reason) = expect.reason {
        assert_eq!(reason(&status), expected_reason, "{case}: {status:?}");
        let domain = status
            .get_error_details()
            .error_info()
            .map(|info| info.domain.clone());
        assert_eq!(domain.as_deref(), Some("reins.v1"), "{case}: {status:?}");
    }
    let expected_fields = sorted(expect.fields.iter().map(|f| f.to_string()).collect());
    assert_eq!(
        sorted(bad_fields(&status)),
        expected_fields,
        "{case}: {status:?}"
    );
    status
}

/// Sends every request of `cases` through `call` and checks each reply.
async fn assert_all_refused<R, T, F, Fut>(cases: Vec<(&str, R, Expect)>, call: F)
where
    F: Fn(R) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
    T: Debug,
{
    for (case, request, expect) in cases {
        assert_refused(case, call(request).await, &expect);
    }
}

/// The server still works after the bad requests: a task starts, runs and completes.
async fn assert_still_serving(client: &Client) {
    let task = client
        .start(StartTask::new("sleep").params(sleep_params(1, 1)))
        .await
        .expect("the server still starts tasks");
    assert_eq!(
        wait_finished(client, &task.id).await.state(),
        TaskState::Completed
    );
    assert_eq!(client.check(&task.id).await.expect("check").id, task.id);
}

/// A task that runs until it is cancelled (or the server is stopped).
async fn long_task(client: &Client) -> String {
    let task = client
        .start(StartTask::new("sleep").params(sleep_params(1000, 1000)))
        .await
        .expect("start a long task");
    wait_state(client, &task.id, TaskState::Running).await.id
}

async fn finished_task(client: &Client) -> String {
    let task = start_sleep(client, 0, 0).await;
    wait_finished(client, &task.id).await.id
}

fn sleep_request(params: serde_json::Value) -> StartTaskRequest {
    StartTask::new("sleep").params(params).into()
}

fn number(n: f64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

/// Sleep params built by hand, as `serde_json` cannot hold a non-finite number.
fn params_with(steps: prost_types::Value) -> prost_types::Struct {
    prost_types::Struct {
        fields: BTreeMap::from([
            ("steps".to_owned(), steps),
            ("step_ms".to_owned(), number(1.0)),
        ]),
    }
}

/// The largest `google.protobuf.Duration` (about 10,000 years); anything longer is invalid.
const MAX_DURATION_SECONDS: i64 = 315_576_000_000;

fn duration(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos })
}

#[tokio::test]
async fn start_task_refuses_bad_requests_naming_each_bad_field() {
    let server = Reinsd::start();
    let client = server.client().await;
    let good = || sleep_request(sleep_params(1, 1));
    let nested_nan = prost_types::Value {
        kind: Some(Kind::ListValue(prost_types::ListValue {
            values: vec![number(1.0), number(f64::NAN)],
        })),
    };
    let cases = vec![
        (
            "empty kind",
            StartTaskRequest {
                kind: String::new(),
                ..good()
            },
            invalid(&["kind"]),
        ),
        (
            "unknown kind",
            StartTaskRequest {
                kind: "teleport".into(),
                ..good()
            },
            Expect {
                code: Code::InvalidArgument,
                reason: Some("KIND_UNKNOWN"),
                fields: vec!["kind"],
            },
        ),
        (
            "wrong param types, all reported at once",
            sleep_request(json!({"steps": "3", "step_ms": -1, "ignore_soft_cancel": "yes"})),
            invalid(&[
                "params.steps",
                "params.step_ms",
                "params.ignore_soft_cancel",
            ]),
        ),
        (
            "fractional count",
            sleep_request(json!({"steps": 1.5, "step_ms": 1})),
            invalid(&["params.steps"]),
        ),
        (
            "unknown param",
            sleep_request(json!({"steps": 1, "step_ms": 1, "speed": 2})),
            invalid(&["params.speed"]),
        ),
        (
            "missing required params",
            sleep_request(json!({})),
            invalid(&["params.steps", "params.step_ms"]),
        ),
        (
            "no params at all",
            StartTaskRequest {
                params: None,
                ..good()
            },
            invalid(&["params.steps", "params.step_ms"]),
        ),
        (
            "negative timeout",
            StartTaskRequest {
                timeout: duration(-1, 0),
                ..good()
            },
            invalid(&["timeout"]),
        ),
        (
            "negative sub-second timeout",
            StartTaskRequest {
                timeout: duration(0, -1),
                ..good()
            },
            invalid(&["timeout"]),
        ),
        (
            "zero timeout",
            StartTaskRequest {
                timeout: duration(0, 0),
                ..good()
            },
            invalid(&["timeout"]),
        ),
        (
            "malformed parent_id",
            StartTaskRequest {
                parent_id: "parent-1".into(),
                ..good()
            },
            invalid(&["parent_id"]),
        ),
        (
            "unknown parent_id",
            StartTaskRequest {
                parent_id: UNKNOWN_ID.into(),
                ..good()
            },
            refused(Code::NotFound, "PARENT_NOT_FOUND"),
        ),
        (
            "empty label key",
            StartTaskRequest {
                labels: HashMap::from([(String::new(), "v".into())]),
                ..good()
            },
            invalid(&["labels"]),
        ),
        (
            "NaN param",
            StartTaskRequest {
                params: Some(params_with(number(f64::NAN))),
                ..good()
            },
            invalid(&["params"]),
        ),
        (
            "infinite param",
            StartTaskRequest {
                params: Some(params_with(number(f64::INFINITY))),
                ..good()
            },
            invalid(&["params"]),
        ),
        (
            "NaN nested in a list param",
            StartTaskRequest {
                params: Some(params_with(nested_nan)),
                ..good()
            },
            invalid(&["params"]),
        ),
        (
            "a zero budget",
            StartTaskRequest {
                budget: HashMap::from([("output_tokens".into(), 0.0)]),
                ..good()
            },
            invalid(&["budget"]),
        ),
        (
            "a NaN budget",
            StartTaskRequest {
                budget: HashMap::from([("cost_usd".into(), f64::NAN)]),
                ..good()
            },
            invalid(&["budget"]),
        ),
        (
            "a budget dimension that is not a name",
            StartTaskRequest {
                budget: HashMap::from([("Output-Tokens".into(), 1.0)]),
                ..good()
            },
            invalid(&["budget"]),
        ),
        (
            "a budget of more than 16 dimensions",
            StartTaskRequest {
                budget: (0..17).map(|i| (format!("d{i}"), 1.0)).collect(),
                ..good()
            },
            invalid(&["budget"]),
        ),
        (
            "a sleep ask_timeout_ms without a question",
            sleep_request(json!({"steps": 1, "step_ms": 1, "ask_timeout_ms": 10})),
            invalid(&["params.ask_timeout_ms"]),
        ),
        (
            "several bad fields in one reply",
            StartTaskRequest {
                kind: String::new(),
                parent_id: "123".into(),
                timeout: duration(-5, 0),
                labels: HashMap::from([(String::new(), "v".into())]),
                ..good()
            },
            invalid(&["kind", "parent_id", "timeout", "labels"]),
        ),
    ];
    assert_all_refused(cases, |request| {
        let mut stub = client.raw();
        async move { stub.start_task(request).await }
    })
    .await;

    let listed = client.list(ListActiveRequest::default()).await.unwrap();
    assert!(
        listed.tasks.is_empty(),
        "no refused request created a task: {listed:?}"
    );
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn start_task_refuses_a_reused_request_id_with_different_params() {
    let server = Reinsd::start();
    let client = server.client().await;
    let first = client
        .start(
            StartTask::new("sleep")
                .params(sleep_params(1000, 1000))
                .request_id("order-7"),
        )
        .await
        .unwrap();
    let reused = client
        .start(
            StartTask::new("sleep")
                .params(sleep_params(5, 1000))
                .request_id("order-7"),
        )
        .await;
    let status = assert_refused(
        "request_id reused with other params",
        reused,
        &refused(Code::AlreadyExists, "REQUEST_ID_CONFLICT"),
    );
    assert!(
        status.message().contains(&first.id),
        "names the existing task: {status:?}"
    );

    let again = client
        .start(
            StartTask::new("sleep")
                .params(sleep_params(1000, 1000))
                .request_id("order-7"),
        )
        .await
        .expect("the original request is still idempotent");
    assert_eq!(again.id, first.id);
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn check_task_refuses_malformed_and_unknown_ids() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut cases: Vec<_> = MALFORMED_IDS
        .iter()
        .map(|id| ("malformed id", id.to_string(), invalid(&["task_id"])))
        .collect();
    cases.push(("unknown id", UNKNOWN_ID.to_owned(), task_not_found()));
    assert_all_refused(cases, |task_id| client.check(task_id)).await;

    let status = client.check(UNKNOWN_ID).await.unwrap_err();
    assert!(
        status.message().contains(UNKNOWN_ID),
        "the message names the id: {status:?}"
    );
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn soft_cancel_refuses_bad_ids_and_a_negative_grace_period() {
    let server = Reinsd::start();
    let client = server.client().await;
    let running = long_task(&client).await;
    let request = |task_id: &str, grace_period| SoftCancelRequest {
        task_id: task_id.to_owned(),
        reason: "test".into(),
        grace_period,
    };
    let mut cases: Vec<_> = MALFORMED_IDS
        .iter()
        .map(|id| ("malformed id", request(id, None), invalid(&["task_id"])))
        .collect();
    cases.extend([
        ("unknown id", request(UNKNOWN_ID, None), task_not_found()),
        (
            "unknown id with a grace period",
            request(UNKNOWN_ID, duration(1, 0)),
            task_not_found(),
        ),
        (
            "negative grace period",
            request(&running, duration(-1, 0)),
            invalid(&["grace_period"]),
        ),
        (
            "negative sub-second grace period",
            request(&running, duration(0, -500)),
            invalid(&["grace_period"]),
        ),
    ]);
    assert_all_refused(cases, |request| {
        let mut stub = client.raw();
        async move { stub.soft_cancel(request).await }
    })
    .await;

    let task = client.check(&running).await.unwrap();
    assert_eq!(
        task.state(),
        TaskState::Running,
        "a refused cancel changes nothing"
    );
    assert!(
        task.cancel.is_none(),
        "no cancel was recorded: {:?}",
        task.cancel
    );
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn hard_cancel_refuses_malformed_and_unknown_ids() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut cases: Vec<_> = MALFORMED_IDS
        .iter()
        .map(|id| ("malformed id", id.to_string(), invalid(&["task_id"])))
        .collect();
    cases.push(("unknown id", UNKNOWN_ID.to_owned(), task_not_found()));
    let call = |task_id: String| {
        let mut stub = client.raw();
        let request = HardCancelRequest {
            task_id,
            reason: "test".into(),
        };
        async move { stub.hard_cancel(request).await }
    };
    assert_all_refused(cases, call).await;
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn list_active_refuses_bad_sizes_tokens_and_filters() {
    let server = Reinsd::start();
    let client = server.client().await;
    let existing = long_task(&client).await;
    let list = |page_size, page_token: &str, parent_id: &str| ListActiveRequest {
        page_size,
        page_token: page_token.to_owned(),
        parent_id: parent_id.to_owned(),
        ..Default::default()
    };
    let bad_token = |token: &str| list(0, token, "");
    let cases = vec![
        (
            "negative page_size",
            list(-1, "", ""),
            invalid(&["page_size"]),
        ),
        (
            "very negative page_size",
            list(i32::MIN, "", ""),
            invalid(&["page_size"]),
        ),
        (
            "garbage page_token",
            bad_token("???"),
            invalid(&["page_token"]),
        ),
        (
            "text page_token",
            bad_token("next page please"),
            invalid(&["page_token"]),
        ),
        // base64url of "hello", of "v1:nope" and of "v2:<uuid>": ours in form, not in content.
        (
            "base64 of text",
            bad_token("aGVsbG8"),
            invalid(&["page_token"]),
        ),
        (
            "base64 of a non-id",
            bad_token("djE6bm9wZQ"),
            invalid(&["page_token"]),
        ),
        (
            "base64 of another version",
            bad_token("djI6MDE5MzAwMDAtMDAwMC03MDAwLTgwMDAtMDAwMDAwMDAwMDAw"),
            invalid(&["page_token"]),
        ),
        (
            "a raw task id as page_token",
            bad_token(&existing),
            invalid(&["page_token"]),
        ),
        (
            "malformed parent_id filter",
            list(0, "", "not-a-uuid"),
            invalid(&["parent_id"]),
        ),
        (
            "empty label key filter",
            ListActiveRequest {
                labels: HashMap::from([(String::new(), "v".into())]),
                ..Default::default()
            },
            invalid(&["labels"]),
        ),
    ];
    assert_all_refused(cases, |request| client.list(request)).await;

    let listed = client.list(ListActiveRequest::default()).await.unwrap();
    assert_eq!(listed.tasks.len(), 1);
    assert_eq!(listed.tasks[0].id, existing);
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn watch_task_refuses_bad_ids() {
    let server = Reinsd::start();
    let client = server.client().await;
    let running = long_task(&client).await;
    let watch = |task_id: &str, after_version| WatchTaskRequest {
        task_id: task_id.to_owned(),
        cancel_on_disconnect: false,
        after_version,
        ..WatchTaskRequest::default()
    };
    let mut cases: Vec<_> = MALFORMED_IDS
        .iter()
        .map(|id| ("malformed id", watch(id, 0), invalid(&["task_id"])))
        .collect();
    cases.extend([
        ("unknown id", watch(UNKNOWN_ID, 0), task_not_found()),
        (
            "unknown id, resuming",
            watch(UNKNOWN_ID, 3),
            task_not_found(),
        ),
    ]);
    assert_all_refused(cases, |request| {
        let mut stub = client.raw();
        // The stream itself is not Debug; the call's outcome is what matters.
        async move { stub.watch_task(request).await.map(|_| "a watch stream") }
    })
    .await;

    let mut events = client
        .watch(&running, WatchOptions::default())
        .await
        .expect("watch");
    let first = tokio_stream::StreamExt::next(&mut events)
        .await
        .expect("an event")
        .unwrap();
    assert_eq!(first.task.unwrap().id, running);
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn answer_task_refuses_bad_ids_and_tasks_that_are_not_waiting() {
    let server = Reinsd::start();
    let client = server.client().await;
    let running = long_task(&client).await;
    let finished = finished_task(&client).await;
    let not_waiting = || refused(Code::FailedPrecondition, "TASK_NOT_WAITING");
    let mut cases: Vec<_> = MALFORMED_IDS
        .iter()
        .map(|id| ("malformed id", id.to_string(), invalid(&["task_id"])))
        .collect();
    cases.extend([
        ("unknown id", UNKNOWN_ID.to_owned(), task_not_found()),
        ("running, not waiting", running.clone(), not_waiting()),
        ("finished", finished.clone(), not_waiting()),
    ]);
    let call = |task_id: String| {
        let mut stub = client.raw();
        let request = AnswerTaskRequest {
            task_id,
            answer: "yes".into(),
        };
        async move { stub.answer_task(request).await }
    };
    assert_all_refused(cases, call).await;

    let task = client.check(&running).await.unwrap();
    assert_eq!(task.state(), TaskState::Running);
    assert!(
        task.answer.is_empty(),
        "the refused answer was not recorded"
    );
    assert_eq!(
        client.check(&finished).await.unwrap().state(),
        TaskState::Completed
    );
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn start_task_refuses_a_timeout_beyond_the_duration_range() {
    let server = Reinsd::start();
    let client = server.client().await;
    let longest = StartTaskRequest {
        timeout: duration(MAX_DURATION_SECONDS, 0),
        ..sleep_request(sleep_params(1, 10))
    };
    let task = client
        .raw()
        .start_task(longest)
        .await
        .expect("the longest timeout")
        .into_inner();
    assert_eq!(
        wait_finished(&client, &task.id).await.state(),
        TaskState::Completed
    );

    let beyond = StartTaskRequest {
        timeout: duration(i64::MAX, 0),
        ..sleep_request(sleep_params(1, 10))
    };
    let result = client.raw().start_task(beyond).await;
    assert_refused(
        "timeout beyond the Duration range",
        result,
        &invalid(&["timeout"]),
    );
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn soft_cancel_refuses_a_grace_period_beyond_the_duration_range() {
    let server = Reinsd::start();
    let client = server.client().await;
    let running = long_task(&client).await;
    let request = SoftCancelRequest {
        task_id: running.clone(),
        reason: "test".into(),
        grace_period: duration(i64::MAX, 0),
    };
    let result = client.raw().soft_cancel(request).await;
    assert_refused(
        "grace period beyond the Duration range",
        result,
        &invalid(&["grace_period"]),
    );
    assert!(client.check(&running).await.unwrap().cancel.is_none());

    let longest = Some(std::time::Duration::from_secs(MAX_DURATION_SECONDS as u64));
    let cancel = client
        .soft_cancel(&running, "test", longest)
        .await
        .expect("the longest grace");
    assert_eq!(cancel.outcome(), CancelOutcome::Requested);
    assert_eq!(
        wait_finished(&client, &running).await.state(),
        TaskState::Cancelled
    );
    assert_still_serving(&client).await;
}

/// Protobuf field 1, length-delimited, holding `bytes`.
fn field_1(bytes: &[u8]) -> Vec<u8> {
    let mut message = vec![0x0a, u8::try_from(bytes.len()).expect("a short field")];
    message.extend_from_slice(bytes);
    message
}

#[tokio::test]
async fn requests_that_do_not_decode_are_invalid_argument_on_every_method() {
    use reins_e2e::raw::{Shape, raw_call};
    let server = Reinsd::start();
    let methods = [
        ("reins.v1.TaskService/StartTask", Shape::Unary),
        ("reins.v1.TaskService/CheckTask", Shape::Unary),
        ("reins.v1.TaskService/SoftCancel", Shape::Unary),
        ("reins.v1.TaskService/HardCancel", Shape::Unary),
        ("reins.v1.TaskService/ListActive", Shape::Unary),
        ("reins.v1.TaskService/AnswerTask", Shape::Unary),
        ("reins.v1.TaskService/WatchTask", Shape::ServerStreaming),
        ("reins.v1.WorkerService/Connect", Shape::BidiStreaming),
    ];
    // Field 1 is a string in every request above, and WorkerHello.name inside field 1 of a
    // WorkerMessage: bytes that are not UTF-8 there do not decode.
    let not_utf8 = [0xff, 0xfe, 0xfd];
    for (method, shape) in methods {
        let bad_string = if method.ends_with("Connect") {
            field_1(&field_1(&not_utf8))
        } else {
            field_1(&not_utf8)
        };
        for (case, body) in [
            ("garbage bytes", vec![0xff; 8]),
            ("a truncated field", vec![0x0a, 0x40, b'x']),
            ("invalid UTF-8 in a string", bad_string),
        ] {
            let case = format!("{method}: {case}");
            let status = assert_refused(
                &case,
                raw_call(&server.url(), &format!("/{method}"), shape, body).await,
                &Expect {
                    code: Code::InvalidArgument,
                    reason: Some("MALFORMED_REQUEST"),
                    fields: vec!["request"],
                },
            );
            assert!(status.message().contains("decode"), "{case}: {status:?}");
        }
    }
    assert_still_serving(&server.client().await).await;
}

#[tokio::test]
async fn params_nested_beyond_the_decoders_limit_are_invalid_argument() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut nested = prost_types::Value {
        kind: Some(Kind::NumberValue(1.0)),
    };
    for _ in 0..60 {
        nested = prost_types::Value {
            kind: Some(Kind::StructValue(prost_types::Struct {
                fields: BTreeMap::from([("deeper".to_owned(), nested)]),
            })),
        };
    }
    let request = StartTaskRequest {
        kind: "sleep".into(),
        params: Some(prost_types::Struct {
            fields: BTreeMap::from([("steps".to_owned(), nested)]),
        }),
        ..Default::default()
    };
    assert_refused(
        "params nested 60 deep",
        client.raw().start_task(request).await,
        &Expect {
            code: Code::InvalidArgument,
            reason: Some("MALFORMED_REQUEST"),
            fields: vec!["request"],
        },
    );
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn a_huge_id_or_kind_is_echoed_only_in_part() {
    let server = Reinsd::start();
    let client = server.client().await;
    let huge = "x".repeat(20_000);
    let status = assert_refused(
        "a 20 kB task id",
        client.check(&huge).await,
        &invalid(&["task_id"]),
    );
    assert!(status.message().len() < 500, "{}", status.message().len());
    let status = assert_refused(
        "a 20 kB kind",
        client.start(StartTask::new(&huge)).await,
        // Longer than any kind may be (--max-id-bytes), before it is looked up.
        &invalid(&["kind"]),
    );
    assert!(status.message().len() < 500, "{}", status.message().len());
    let mut params = sleep_params(1, 1);
    params[&huge] = json!(1);
    let status = client
        .start(StartTask::new("sleep").params(params))
        .await
        .expect_err("a 20 kB unknown param");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().len() < 500, "{}", status.message().len());
    let fields = bad_fields(&status);
    assert_eq!(fields.len(), 1, "{fields:?}");
    assert!(
        fields[0].len() < 200,
        "the field name is cut too: {fields:?}"
    );
    assert_still_serving(&client).await;
}

#[tokio::test]
async fn durations_that_are_not_normalised_are_refused() {
    let server = Reinsd::start();
    let client = server.client().await;
    let id = long_task(&client).await;
    let not_normalised = [(0, 1_500_000_000), (1, -5), (-1, 5), (0, -1_000_000_000)];
    let cases = not_normalised
        .iter()
        .map(|&(seconds, nanos)| {
            (
                "grace period",
                SoftCancelRequest {
                    task_id: id.clone(),
                    reason: String::new(),
                    grace_period: duration(seconds, nanos),
                },
                invalid(&["grace_period"]),
            )
        })
        .collect();
    assert_all_refused(cases, |request| {
        let mut raw = client.raw();
        async move { raw.soft_cancel(request).await }
    })
    .await;
    let cases = not_normalised
        .iter()
        .map(|&(seconds, nanos)| {
            (
                "timeout",
                StartTaskRequest {
                    timeout: duration(seconds, nanos),
                    ..sleep_request(sleep_params(1, 1))
                },
                invalid(&["timeout"]),
            )
        })
        .collect();
    assert_all_refused(cases, |request| {
        let mut raw = client.raw();
        async move { raw.start_task(request).await }
    })
    .await;
    assert_eq!(
        client.check(&id).await.unwrap().cancel,
        None,
        "no refused cancel was recorded"
    );
}

#[tokio::test]
async fn resuming_after_a_version_the_task_has_not_reached_is_out_of_range() {
    let server = Reinsd::start();
    let client = server.client().await;
    let running = client.check(&long_task(&client).await).await.unwrap();
    let finished = client.check(&finished_task(&client).await).await.unwrap();
    for task in [running, finished] {
        let ahead = task.version + 1_000;
        let result = client
            .watch(
                &task.id,
                WatchOptions {
                    after_version: ahead,
                    ..WatchOptions::default()
                },
            )
            .await
            .map(drop);
        assert_refused(
            &format!("after_version {ahead} of a task at {}", task.version),
            result,
            &refused(Code::OutOfRange, "VERSION_AHEAD"),
        );
    }
}
