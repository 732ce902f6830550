//! StartTask: validation, idempotency, parents, capacity and progress reporting.

use reins_client::StartTask;
use reins_client::proto::TaskState;
use reins_e2e::{
    REPLICA_ID, Reinsd, json_of, reason, sleep_params, start_sleep, wait_finished, wait_state,
};
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test]
async fn a_started_task_runs_on_this_replica_with_a_uuid_v7_id() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = client
        .start(
            StartTask::new("sleep")
                .params(sleep_params(1, 10))
                .description("demo"),
        )
        .await
        .unwrap();
    assert_eq!(task.state(), TaskState::Running);
    assert_eq!(task.owner, REPLICA_ID);
    assert_eq!(task.description, "demo");
    let id = uuid_version(&task.id);
    assert_eq!(id, 7, "task ids are UUIDv7");
    assert!(task.created_at.is_some() && task.started_at.is_some());
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Completed);
    assert!(done.finished_at.is_some());
}

/// The version nibble of a textual UUID.
fn uuid_version(id: &str) -> u32 {
    assert_eq!(id.len(), 36, "{id} is not a UUID");
    id[14..15].parse().unwrap()
}

#[tokio::test]
async fn the_same_request_id_returns_the_same_task() {
    let server = Reinsd::start();
    let client = server.client().await;
    let start = || {
        StartTask::new("sleep")
            .params(sleep_params(100, 100))
            .request_id("order-42")
    };
    let first = client.start(start()).await.unwrap();
    let second = client.start(start()).await.unwrap();
    assert_eq!(first.id, second.id);
    assert_eq!(second.request_id, "order-42");
    let listed = client.list(Default::default()).await.unwrap();
    assert_eq!(listed.tasks.len(), 1, "no second task was created");
}

#[tokio::test]
async fn a_parent_must_exist_and_be_active_unless_the_child_is_detached() {
    let server = Reinsd::start();
    let client = server.client().await;
    let missing = "01930000-0000-7000-8000-000000000000";
    let status = client
        .start(
            StartTask::new("sleep")
                .params(sleep_params(1, 1))
                .parent(missing),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::NotFound, "PARENT_NOT_FOUND")
    );

    let parent = start_sleep(&client, 0, 0).await;
    wait_finished(&client, &parent.id).await;
    let status = client
        .start(
            StartTask::new("sleep")
                .params(sleep_params(1, 1))
                .parent(&parent.id),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::FailedPrecondition, "PARENT_FINISHED")
    );

    let detached = client
        .start(
            StartTask::new("sleep")
                .params(sleep_params(1, 1))
                .parent(&parent.id)
                .detached(true),
        )
        .await
        .unwrap();
    assert_eq!(detached.parent_id, parent.id);
    assert!(detached.detached);
}

#[tokio::test]
async fn tasks_beyond_capacity_wait_pending_and_start_oldest_first() {
    let server = Reinsd::with_args(&["--max-concurrency", "1"]);
    let client = server.client().await;
    let first = start_sleep(&client, 1, 300).await;
    let second = start_sleep(&client, 1, 300).await;
    let third = start_sleep(&client, 1, 300).await;
    assert_eq!(first.state(), TaskState::Running);
    assert_eq!(second.state(), TaskState::Pending);
    assert_eq!(third.state(), TaskState::Pending);
    assert!(second.owner.is_empty(), "a pending task has no owner yet");

    let second_running = wait_state(&client, &second.id, TaskState::Running).await;
    let third_now = client.check(&third.id).await.unwrap();
    assert_eq!(
        third_now.state(),
        TaskState::Pending,
        "one at a time, oldest first"
    );
    let first_done = client.check(&first.id).await.unwrap();
    assert_eq!(first_done.state(), TaskState::Completed);
    let started = second_running.started_at.unwrap();
    let finished = first_done.finished_at.unwrap();
    assert!((started.seconds, started.nanos) >= (finished.seconds, finished.nanos));
    assert_eq!(
        wait_finished(&client, &third.id).await.state(),
        TaskState::Completed
    );
}

#[tokio::test]
async fn progress_and_checkpoints_are_one_version_and_one_event_each() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = start_sleep(&client, 4, 50).await;
    let mut events = client.watch(&task.id, Default::default()).await.unwrap();
    let mut seen = Vec::new();
    while let Some(event) = events.next().await {
        seen.push(event.unwrap().task.unwrap());
    }
    let versions: Vec<u64> = seen.iter().map(|t| t.version).collect();
    let expected: Vec<u64> = (versions[0]..versions[0] + versions.len() as u64).collect();
    assert_eq!(versions, expected, "one event per version, none skipped");

    let done = seen.last().unwrap();
    assert_eq!(done.state(), TaskState::Completed);
    assert_eq!(done.partial_results.len(), 4);
    assert_eq!(done.progress.as_ref().unwrap().fraction, 1.0);
    let result = json_of(done.result.as_ref());
    assert_eq!(result["steps_completed"], 4);
    // Every checkpoint event adds exactly one partial result and moves progress to i/4.
    for pair in seen.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        if after.state() == TaskState::Running {
            assert_eq!(
                after.partial_results.len(),
                before.partial_results.len() + 1
            );
            let fraction = after.progress.as_ref().unwrap().fraction;
            assert_eq!(fraction, after.partial_results.len() as f64 / 4.0);
        }
    }
}

#[tokio::test]
async fn a_failing_step_ends_failed_with_the_partial_results_so_far() {
    let server = Reinsd::start();
    let client = server.client().await;
    let params = serde_json::json!({"steps": 5, "step_ms": 10, "fail_at_step": 3});
    let task = client
        .start(StartTask::new("sleep").params(params))
        .await
        .unwrap();
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Failed);
    assert!(done.error.contains("step 3"), "{}", done.error);
    assert_eq!(done.partial_results.len(), 2);
}
