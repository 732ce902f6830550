//! The server around the task service: health, reflection, graceful shutdown, retention,
//! the default grace flag and the message size limit.

use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use reins_client::proto::{
    CancelMode, CancelOutcome, StartTaskRequest, Task, TaskEvent, TaskState,
};
use reins_client::{Client, StartTask, WatchOptions};
use reins_e2e::{
    PATIENCE, Reinsd, channel, eventually, health, long_sleep, reason, sleep_params, start_sleep,
    stuck_sleep, system_time, wait_finished, wait_state,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

const TASK_SERVICE: &str = "reins.v1.TaskService";
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
/// How long a shutting-down server may take to exit (its grace plus the soft window and a
/// connection drain, on a busy machine).
const EXIT_BOUND: Duration = Duration::from_secs(15);

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_task_service() {
    let server = Reinsd::start();
    let channel = channel(&server).await;
    for service in ["", TASK_SERVICE] {
        assert_eq!(
            health(&channel, service).await,
            ServingStatus::Serving,
            "{service:?}"
        );
    }
}

/// The calls of one version of `grpc.reflection`: v1 and v1alpha have the same messages in
/// different packages, so the code is the same but the types are not.
macro_rules! reflection_calls {
    ($version:ident) => {
        mod $version {
            use tonic::transport::Channel;
            use tonic_reflection::pb::$version::{
                ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse,
            };

            async fn ask(channel: &Channel, request: MessageRequest) -> MessageResponse {
                let request = ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(request),
                };
                let mut responses = ServerReflectionClient::new(channel.clone())
                    .server_reflection_info(tokio_stream::once(request))
                    .await
                    .expect("reflection call")
                    .into_inner();
                responses
                    .message()
                    .await
                    .expect("reflection response")
                    .and_then(|response| response.message_response)
                    .expect("a reflection answer")
            }

            pub async fn list_services(channel: &Channel) -> Vec<String> {
                match ask(channel, MessageRequest::ListServices(String::new())).await {
                    MessageResponse::ListServicesResponse(list) => list
                        .service
                        .into_iter()
                        .map(|service| service.name)
                        .collect(),
                    other => panic!("expected a service list, got {other:?}"),
                }
            }

            /// The encoded `FileDescriptorProto`s of the file declaring `symbol` and its imports.
            pub async fn file_containing_symbol(channel: &Channel, symbol: &str) -> Vec<Vec<u8>> {
                let request = MessageRequest::FileContainingSymbol(symbol.to_owned());
                match ask(channel, request).await {
                    MessageResponse::FileDescriptorResponse(files) => files.file_descriptor_proto,
                    other => panic!("expected the file declaring {symbol}, got {other:?}"),
                }
            }
        }
    };
}

reflection_calls!(v1);
reflection_calls!(v1alpha);

/// The length-delimited fields of an encoded protobuf message, as (field number, bytes);
/// fields of other wire types are skipped. Enough to read names out of descriptors.
fn length_delimited_fields(mut bytes: &[u8]) -> Vec<(u64, &[u8])> {
    fn varint(bytes: &mut &[u8]) -> u64 {
        let mut value = 0;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = bytes.split_first().expect("truncated varint");
            *bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return value;
            }
        }
        panic!("varint longer than 64 bits");
    }
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes);
        match key & 7 {
            0 => {
                varint(&mut bytes);
            }
            1 => bytes = &bytes[8..],
            2 => {
                let len = usize::try_from(varint(&mut bytes)).expect("length");
                let (value, rest) = bytes.split_at(len);
                fields.push((key >> 3, value));
                bytes = rest;
            }
            5 => bytes = &bytes[4..],
            other => panic!("unexpected wire type {other}"),
        }
    }
    fields
}

/// Whether one of the encoded `FileDescriptorProto`s declares message `package.name`.
fn declares_message(files: &[Vec<u8>], package: &str, name: &str) -> bool {
    // FileDescriptorProto: 2 = package, 4 = message_type; DescriptorProto: 1 = name.
    files.iter().any(|file| {
        let fields = length_delimited_fields(file);
        fields
            .iter()
            .any(|&(number, value)| number == 2 && value == package.as_bytes())
            && fields.iter().any(|&(number, message)| {
                number == 4
                    && length_delimited_fields(message)
                        .iter()
                        .any(|&(number, value)| number == 1 && value == name.as_bytes())
            })
    })
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_task_and_health_services() {
    let server = Reinsd::start();
    let channel = channel(&server).await;
    for (version, services) in [
        ("v1", v1::list_services(&channel).await),
        ("v1alpha", v1alpha::list_services(&channel).await),
    ] {
        for expected in [TASK_SERVICE, HEALTH_SERVICE] {
            assert!(
                services.iter().any(|service| service == expected),
                "reflection {version} lacks {expected}: {services:?}"
            );
        }
    }
}

#[tokio::test]
async fn reflection_resolves_the_task_and_error_detail_types() {
    let server = Reinsd::start();
    let channel = channel(&server).await;
    for (symbol, package, name) in [
        ("reins.v1.Task", "reins.v1", "Task"),
        ("google.rpc.BadRequest", "google.rpc", "BadRequest"),
    ] {
        for (version, files) in [
            ("v1", v1::file_containing_symbol(&channel, symbol).await),
            (
                "v1alpha",
                v1alpha::file_containing_symbol(&channel, symbol).await,
            ),
        ] {
            assert!(
                declares_message(&files, package, name),
                "reflection {version}: no file declaring {symbol} among {} files",
                files.len()
            );
        }
    }
}

/// Reads a watch to its end: every task it carried, and the error it ended with, if any.
async fn watch_to_end(
    mut events: impl Stream<Item = Result<TaskEvent, Status>> + Unpin,
) -> (Vec<Task>, Option<Status>) {
    let reading = async {
        let mut tasks = Vec::new();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => tasks.push(event.task.expect("event task")),
                Err(status) => return (tasks, Some(status)),
            }
        }
        (tasks, None)
    };
    tokio::time::timeout(PATIENCE, reading)
        .await
        .expect("the watch to end")
}

/// What a shutdown did to the task that was running when it began.
struct Shutdown {
    /// The task's last version, as the watch opened before the shutdown saw it.
    task: Task,
    signalled_at: SystemTime,
}

/// Runs `task` on a server with `--shutdown-grace grace`, then sends SIGTERM
/// while the task runs and a watch on it is open. Checks what every shutdown must do: health
/// turns NOT_SERVING while the process is still alive, StartTask is refused with
/// SHUTTING_DOWN, the watch sees the task end and then closes (with a shared store: ends
/// UNAVAILABLE at once, and a watch through another replica sees the end), and the process
/// exits 0. The calls after SIGTERM are made on new connections, as a probe's are (the open
/// ones get a GOAWAY with a shared store).
async fn shut_down_while_running(grace: &str, task: StartTask) -> Shutdown {
    let mut server = Reinsd::with_args(&["--shutdown-grace", grace]);
    let client = server.client().await;
    let task = client.start(task).await.unwrap();
    let events = client
        .watch(&task.id, WatchOptions::default())
        .await
        .unwrap();
    wait_state(&client, &task.id, TaskState::Running).await;

    let signalled_at = SystemTime::now();
    server.signal(Signal::SIGTERM);
    eventually("health NOT_SERVING", || async {
        (health(&channel(&server).await, "").await == ServingStatus::NotServing).then_some(())
    })
    .await;
    assert_eq!(
        health(&channel(&server).await, TASK_SERVICE).await,
        ServingStatus::NotServing
    );
    assert!(
        server.wait_exit(Duration::ZERO).await.is_none(),
        "reinsd exited without a grace period"
    );
    let refused = server
        .client()
        .await
        .start(StartTask::new("sleep").params(sleep_params(1, 10)))
        .await;
    let err = refused.expect_err("StartTask during shutdown");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(reason(&err), "SHUTTING_DOWN");

    let (tasks, ended_with) = watch_to_end(events).await;
    let status = server.wait_exit(EXIT_BOUND).await.expect("reinsd to exit");
    assert!(status.success(), "reinsd exited with {status}");
    let last = match server.own_redis_args() {
        // With a shared store the watch ends at once, UNAVAILABLE: the watcher watches
        // again through another replica, which tells how the task ended.
        Some(redis_args) => {
            let ended_with = ended_with.expect("the watch ends with a status");
            assert_eq!(ended_with.code(), Code::Unavailable, "{ended_with:?}");
            let mut args: Vec<&str> = redis_args.iter().map(String::as_str).collect();
            args.extend(["--replica-id", "other"]);
            let other = Reinsd::with_args(&args);
            let (tasks, _) = watch_to_end(
                other
                    .client()
                    .await
                    .watch(&task.id, WatchOptions::default())
                    .await
                    .unwrap(),
            )
            .await;
            tasks.last().cloned().expect("the watch carried the task")
        }
        None => {
            let last = tasks.last().cloned().expect("the watch carried the task");
            assert!(
                last.state().is_terminal(),
                "the watch ended before the task did: {last:?} then {ended_with:?}"
            );
            if let Some(status) = ended_with {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            }
            last
        }
    };
    Shutdown {
        task: last,
        signalled_at,
    }
}

#[tokio::test]
async fn sigterm_soft_cancels_running_tasks_after_the_grace_and_exits_zero() {
    let grace = Duration::from_millis(500);
    let Shutdown { task, signalled_at } = shut_down_while_running("500ms", long_sleep()).await;
    assert_eq!(task.state(), TaskState::Cancelled, "{task:?}");
    let cancel = task.cancel.as_ref().expect("cancel info");
    assert_eq!(cancel.reason, "server shutting down");
    assert_eq!(cancel.mode(), CancelMode::Soft, "{cancel:?}");
    assert!(!cancel.escalated, "{cancel:?}");
    assert!(
        system_time(cancel.requested_at.as_ref()) >= signalled_at + grace,
        "cancelled before the shutdown grace ran out: {cancel:?}"
    );
}

#[tokio::test]
async fn sigterm_escalates_tasks_that_ignore_the_soft_cancel_and_still_exits_zero() {
    let Shutdown { task, .. } = shut_down_while_running("500ms", stuck_sleep()).await;
    assert_eq!(task.state(), TaskState::Cancelled, "{task:?}");
    let cancel = task.cancel.as_ref().expect("cancel info");
    assert_eq!(cancel.reason, "server shutting down");
    assert!(cancel.escalated, "{cancel:?}");
}

#[tokio::test]
async fn a_task_finishing_within_the_shutdown_grace_completes() {
    // A grace far longer than the exit bound: the server must not wait it out once idle.
    let Shutdown { task, signalled_at } =
        shut_down_while_running("60s", StartTask::new("sleep").params(sleep_params(10, 100))).await;
    assert_eq!(task.state(), TaskState::Completed, "{task:?}");
    assert!(task.cancel.is_none(), "{:?}", task.cancel);
    assert!(
        system_time(task.finished_at.as_ref()) > signalled_at,
        "the task was over before the shutdown began"
    );
}

#[tokio::test]
async fn finished_tasks_are_dropped_after_the_retention_period() {
    let retention = Duration::from_secs(1);
    let server = Reinsd::with_args(&["--retention", "1s"]);
    let client = server.client().await;
    let task = start_sleep(&client, 1, 10).await;
    let done = wait_finished(&client, &task.id).await;
    let checked = client
        .check(&task.id)
        .await
        .expect("readable right after finishing");
    assert_eq!(checked.state(), TaskState::Completed);

    let gone = eventually("the task to be dropped", || async {
        client.check(&task.id).await.err()
    })
    .await;
    assert!(
        SystemTime::now() >= system_time(done.finished_at.as_ref()) + retention,
        "dropped before its retention ran out"
    );
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    assert_eq!(reason(&gone), "TASK_NOT_FOUND");
}

#[tokio::test]
async fn soft_cancel_without_a_grace_period_uses_the_default_grace_flag() {
    let server = Reinsd::with_args(&["--default-grace", "300ms"]);
    let client = server.client().await;
    let task = client.start(stuck_sleep()).await.unwrap();
    wait_state(&client, &task.id, TaskState::Running).await;

    let response = client.soft_cancel(&task.id, "", None).await.unwrap();
    assert_eq!(response.outcome(), CancelOutcome::Requested);
    let cancel = response
        .task
        .and_then(|task| task.cancel)
        .expect("cancel info");
    let requested = system_time(cancel.requested_at.as_ref());
    let deadline = system_time(cancel.grace_deadline.as_ref());
    assert_eq!(
        deadline.duration_since(requested).ok(),
        Some(Duration::from_millis(300)),
        "grace deadline {deadline:?} for a cancel requested at {requested:?}"
    );

    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Cancelled, "{done:?}");
    let cancel = done.cancel.as_ref().expect("cancel info");
    assert!(cancel.escalated, "{cancel:?}");
    assert_eq!(cancel.mode(), CancelMode::Hard, "{cancel:?}");
}

#[tokio::test]
async fn an_oversize_request_is_resource_exhausted_and_the_server_carries_on() {
    let server = Reinsd::start();
    let client: Client = server.client().await;
    let small = start_sleep(&client, 1, 10).await;
    let huge = StartTaskRequest::from(
        StartTask::new("sleep")
            .params(sleep_params(1, 10))
            .description("x".repeat(5 << 20)),
    );
    let err = client
        .raw()
        .max_encoding_message_size(16 << 20)
        .start_task(huge)
        .await
        .expect_err("a 5 MiB request");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    let checked = client
        .check(&small.id)
        .await
        .expect("CheckTask after the oversize request");
    assert_eq!(checked.id, small.id);
}

#[test]
fn an_empty_or_unsafe_replica_id_stops_the_server_with_a_clear_message() {
    for bad in ["", "two words", "a:b"] {
        let stderr = reins_e2e::refused_at_startup(&[], &[("REINS_REPLICA_ID", bad)]);
        assert!(
            stderr.contains("replica-id") && stderr.contains("1 to 253 characters"),
            "{bad:?}: {stderr}"
        );
    }
}

#[tokio::test]
async fn logs_written_to_a_file_carry_no_colour_codes() {
    let server = Reinsd::start();
    let client = server.client().await;
    start_sleep(&client, 1, 1).await;
    let log = server.log();
    assert!(log.contains("serving"), "{log}");
    assert!(!log.contains('\u{1b}'), "an escape code in: {log}");
}
