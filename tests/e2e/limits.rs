//! Limits that bound one client or worker (`--max-…`): each at its boundary — exactly at
//! the limit accepted, one byte (or label, or level) over refused naming the field, the
//! limit and its flag — a worker report over a limit failing only that task, and a
//! configuration whose largest record cannot fit in one message refused at startup.

use prost::Message as _;
use reins_client::proto::{StartTaskRequest, TaskState};
use reins_client::{Client, StartTask};
use reins_e2e::{
    FakeWorker, Reinsd, asking, bad_fields, json_of, reason, refused_at_startup, wait_finished,
    wait_state,
};
use serde_json::json;
use tonic::{Code, Status};
use tonic_types::StatusExt;

const KIND: &str = "research";

/// A worker kind, so that params are not checked against a built-in kind's schema.
fn research() -> StartTask {
    StartTask::new(KIND)
}

/// Asserts INVALID_ARGUMENT naming exactly `field`, whose description names `limit`.
fn assert_over<T>(case: &str, result: Result<T, Status>, field: &str, limit: &str) {
    let Err(status) = result else {
        panic!("{case}: accepted over the limit");
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
    assert_eq!(reason(&status), "INVALID_ARGUMENT", "{case}");
    assert_eq!(bad_fields(&status), [field], "{case}: {status:?}");
    let details = status.get_error_details();
    let description = &details.bad_request().unwrap().field_violations[0].description;
    assert!(description.contains(limit), "{case}: {description}");
}

async fn start(client: &Client, task: StartTask) -> Result<reins_client::proto::Task, Status> {
    client.start(task).await
}

/// Params `{"p": "xx…"}` whose protobuf encoding is exactly `bytes` long.
fn params_of(bytes: usize) -> serde_json::Value {
    let mut n = bytes;
    loop {
        let params = json!({ "p": "x".repeat(n) });
        let size = reins_proto::json::object_to_struct(&params)
            .unwrap()
            .encoded_len();
        if size <= bytes {
            assert_eq!(size, bytes, "no string gives exactly {bytes} bytes");
            return params;
        }
        n -= 1;
    }
}

/// Params nested `levels` deep (the params object is level 1).
fn nested(levels: usize) -> serde_json::Value {
    let mut value = json!(1);
    for _ in 0..levels {
        value = json!({ "a": value });
    }
    value
}

#[tokio::test]
async fn start_task_accepts_every_field_at_its_default_limit_and_refuses_one_over() {
    // A kind name is at most 128 characters (the kind-name rule, tighter than
    // --max-id-bytes): the longest declarable kind starts; past --max-id-bytes the request
    // is refused for its size before the kind is looked up.
    let long_kind = "k".repeat(128);
    let server = Reinsd::with_args(&["--worker-kind", KIND, "--worker-kind", &long_kind]);
    let client = server.client().await;
    let labels =
        |task: StartTask, n: usize| (0..n).fold(task, |task, i| task.label(format!("key{i}"), "v"));
    let cases: Vec<(&str, StartTask, StartTask, &str, &str)> = vec![
        (
            "kind",
            StartTask::new(long_kind.clone()),
            StartTask::new("k".repeat(257)),
            "kind",
            "at most 256 (--max-id-bytes)",
        ),
        (
            "description",
            research().description("é".repeat(2048)),
            research().description(format!("{}x", "é".repeat(2048))),
            "description",
            "4097 bytes; at most 4096 (--max-description-bytes)",
        ),
        (
            "session_id",
            research().session("s".repeat(256)),
            research().session("s".repeat(257)),
            "session_id",
            "--max-id-bytes",
        ),
        (
            "request_id",
            research().request_id("r".repeat(256)),
            research().request_id("r".repeat(257)),
            "request_id",
            "--max-id-bytes",
        ),
        (
            "label count",
            labels(research(), 64),
            labels(research(), 65),
            "labels",
            "65 labels; at most 64 (--max-labels)",
        ),
        (
            "label key",
            research().label("k".repeat(128), "v"),
            research().label("k".repeat(129), "v"),
            "labels",
            "at most 128 (--max-label-key-bytes)",
        ),
        (
            "label value",
            research().label("team", "v".repeat(1024)),
            research().label("team", "v".repeat(1025)),
            "labels.team",
            "at most 1024 (--max-label-value-bytes)",
        ),
        (
            "params depth",
            research().params(nested(32)),
            research().params(nested(33)),
            "params",
            "33 levels deep; at most 32 (--max-params-depth)",
        ),
        (
            "params bytes",
            research().params(params_of(1 << 20)),
            research().params(params_of((1 << 20) + 1)),
            "params",
            "1048577 bytes; at most 1048576 (--max-params-bytes)",
        ),
    ];
    for (case, at_limit, over, field, limit) in cases {
        let accepted = start(&client, at_limit).await;
        assert!(accepted.is_ok(), "{case} at the limit: {accepted:?}");
        assert_over(case, start(&client, over).await, field, limit);
    }
}

#[tokio::test]
async fn one_reply_names_every_field_over_its_limit() {
    let server = Reinsd::with_args(&["--worker-kind", KIND]);
    let request: StartTaskRequest = research()
        .description("d".repeat(5000))
        .session("s".repeat(300))
        .into();
    let status = server
        .client()
        .await
        .raw()
        .start_task(request)
        .await
        .unwrap_err();
    let mut fields = bad_fields(&status);
    fields.sort();
    assert_eq!(fields, ["description", "session_id"], "{status:?}");
}

#[tokio::test]
async fn answers_and_cancel_reasons_are_bounded() {
    let server = Reinsd::start();
    let client = server.client().await;
    let answer_limit = 64 << 10;
    let task = client.start(asking("colour?")).await.unwrap();
    wait_state(&client, &task.id, TaskState::WaitingForAnswer).await;
    assert_over(
        "answer",
        client.answer(&task.id, "a".repeat(answer_limit + 1)).await,
        "answer",
        "at most 65536 (--max-answer-bytes)",
    );
    client
        .answer(&task.id, "a".repeat(answer_limit))
        .await
        .expect("an answer at the limit");
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Completed);
    assert_eq!(done.answer.len(), answer_limit);

    let task = client.start(reins_e2e::long_sleep()).await.unwrap();
    assert_over(
        "soft cancel reason",
        client.soft_cancel(&task.id, "r".repeat(1025), None).await,
        "reason",
        "at most 1024 (--max-reason-bytes)",
    );
    assert_over(
        "hard cancel reason",
        client.hard_cancel(&task.id, "r".repeat(1025)).await,
        "reason",
        "--max-reason-bytes",
    );
    let cancelled = client
        .hard_cancel(&task.id, "r".repeat(1024))
        .await
        .expect("a reason at the limit");
    assert_eq!(cancelled.task.unwrap().cancel.unwrap().reason.len(), 1024);
}

#[tokio::test]
async fn lowered_limits_take_effect() {
    let server = Reinsd::with_args(&[
        "--worker-kind",
        KIND,
        "--max-labels",
        "2",
        "--max-description-bytes",
        "10",
        "--max-params-depth",
        "2",
    ]);
    let client = server.client().await;
    let two = research()
        .label("a", "1")
        .label("b", "2")
        .description("d".repeat(10));
    assert!(start(&client, two.params(nested(2))).await.is_ok());
    let three = research().label("a", "1").label("b", "2").label("c", "3");
    assert_over(
        "labels",
        start(&client, three).await,
        "labels",
        "at most 2 (--max-labels)",
    );
    assert_over(
        "description",
        start(&client, research().description("d".repeat(11))).await,
        "description",
        "at most 10 (--max-description-bytes)",
    );
    assert_over(
        "depth",
        start(&client, research().params(nested(3))).await,
        "params",
        "at most 2 (--max-params-depth)",
    );
}

#[tokio::test]
async fn a_worker_report_over_a_limit_fails_only_that_task_and_the_worker_keeps_its_stream() {
    let server = Reinsd::with_args(&[
        "--worker-kind",
        KIND,
        "--max-result-bytes",
        "1000",
        "--max-question-bytes",
        "100",
        "--max-error-bytes",
        "100",
    ]);
    let client = server.client().await;
    let mut worker = FakeWorker::connect(&server.url(), "w", &[KIND], 5).await;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let task = client.start(research()).await.unwrap();
        assert_eq!(worker.expect_assign().await.id, task.id);
        tasks.push(task.id);
    }
    let [fits, big_result, big_question, big_error, other] = &tasks[..] else {
        unreachable!()
    };
    // A string value of 1000 bytes encoded: tag, two length bytes, 997 bytes.
    let at_limit = json!("x".repeat(997));
    worker.complete(fits, at_limit.clone());
    let done = wait_finished(&client, fits).await;
    assert_eq!(done.state(), TaskState::Completed, "{}", done.error);
    assert_eq!(json_of(done.result.as_ref()), at_limit);

    worker.complete(big_result, json!("x".repeat(998)));
    let failed = wait_finished(&client, big_result).await;
    assert_eq!(failed.state(), TaskState::Failed);
    assert!(
        failed
            .error
            .contains("1001 bytes; at most 1000 (--max-result-bytes)"),
        "{}",
        failed.error
    );
    assert!(failed.result.is_none(), "the oversize result is not stored");

    worker.ask(big_question, &"?".repeat(101));
    let abort = worker.expect_abort().await;
    assert_eq!(&abort.task_id, big_question);
    assert!(
        abort.reason.contains("--max-question-bytes"),
        "{}",
        abort.reason
    );
    let failed = wait_finished(&client, big_question).await;
    assert_eq!(failed.state(), TaskState::Failed);
    assert!(
        failed.question.is_empty(),
        "the oversize question is not stored"
    );

    worker.fail(big_error, &"e".repeat(101));
    let failed = wait_finished(&client, big_error).await;
    assert_eq!(failed.state(), TaskState::Failed);
    assert!(
        failed.error.contains("at most 100 (--max-error-bytes)"),
        "{}",
        failed.error
    );

    // The stream and the worker's other task go on.
    worker.progress(other, 0.5, "still here");
    worker.complete(other, json!("done"));
    let done = wait_finished(&client, other).await;
    assert_eq!(done.state(), TaskState::Completed);
    assert_eq!(done.progress.unwrap().message, "still here");
}

#[tokio::test]
async fn a_built_in_kind_over_a_limit_fails_naming_it() {
    let server = Reinsd::with_args(&["--max-question-bytes", "10"]);
    let client = server.client().await;
    let task = client.start(asking("which colour, please?")).await.unwrap();
    let failed = wait_finished(&client, &task.id).await;
    assert_eq!(failed.state(), TaskState::Failed);
    assert!(
        failed
            .error
            .contains("21 bytes; at most 10 (--max-question-bytes)"),
        "{}",
        failed.error
    );
}

#[test]
fn a_configuration_whose_largest_record_cannot_fit_is_refused_at_startup() {
    for args in [
        &["--max-message-size", "3000000"][..],
        &["--max-result-bytes", "4194304"],
        &["--max-id-bytes", "8", "--replica-id", "replica-9"],
    ] {
        let stderr = refused_at_startup(args, &[]);
        let expected = if args[0] == "--max-id-bytes" {
            "the replica id is 9 bytes; at most 8 (--max-id-bytes)"
        } else {
            "more than --max-message-size"
        };
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
