//! Soft and hard cancel, escalation, finished tasks, races, subtrees and timeouts.

use std::time::Duration;

use reins_client::proto::{CancelMode, CancelOutcome, Task, TaskState};
use reins_client::{Client, StartTask};
use reins_e2e::{Reinsd, json_of, long_sleep, start_sleep, stuck_sleep, wait_finished, wait_for};
use serde_json::json;

/// Waits until the task has recorded `n` checkpoints.
async fn wait_checkpoints(client: &Client, id: &str, n: usize) -> Task {
    wait_for(client, id, "checkpoints", |task| {
        task.partial_results.len() >= n
    })
    .await
}

fn seconds(timestamp: &prost_types::Timestamp) -> f64 {
    timestamp.seconds as f64 + f64::from(timestamp.nanos) / 1e9
}

#[tokio::test]
async fn soft_cancel_of_a_pending_task_cancels_it_before_it_starts() {
    let server = Reinsd::with_args(&["--max-concurrency", "1"]);
    let client = server.client().await;
    let _busy = client.start(long_sleep()).await.unwrap();
    let queued = client.start(long_sleep()).await.unwrap();
    assert_eq!(queued.state(), TaskState::Pending);
    let response = client
        .soft_cancel(&queued.id, "not needed", None)
        .await
        .unwrap();
    assert_eq!(response.outcome(), CancelOutcome::Cancelled);
    let task = response.task.unwrap();
    assert_eq!(task.state(), TaskState::Cancelled);
    assert!(task.started_at.is_none(), "it never started");
    assert!(task.owner.is_empty());
}

#[tokio::test]
async fn soft_cancel_stops_a_running_task_at_its_next_checkpoint_with_partial_results() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = client.start(long_sleep()).await.unwrap();
    wait_checkpoints(&client, &task.id, 2).await;

    let response = client
        .soft_cancel(
            &task.id,
            "user changed their mind",
            Some(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(response.outcome(), CancelOutcome::Requested);
    let requested = response.task.unwrap();
    let cancel = requested.cancel.clone().unwrap();
    assert_eq!(cancel.mode(), CancelMode::Soft);
    assert_eq!(cancel.reason, "user changed their mind");
    let grace = seconds(cancel.grace_deadline.as_ref().unwrap())
        - seconds(cancel.requested_at.as_ref().unwrap());
    assert!(
        (grace - 60.0).abs() < 0.01,
        "grace deadline = requested_at + grace period, got {grace}"
    );

    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Cancelled);
    assert!(!done.cancel.as_ref().unwrap().escalated);
    assert!(done.partial_results.len() >= 2, "checkpoints are kept");
    let result = json_of(done.result.as_ref());
    assert_eq!(
        result["steps_completed"],
        done.partial_results.len(),
        "the result says what was done"
    );
}

#[tokio::test]
async fn a_repeated_soft_cancel_is_harmless() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = client.start(stuck_sleep()).await.unwrap();
    let first = client
        .soft_cancel(&task.id, "first", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let second = client
        .soft_cancel(&task.id, "second", Some(Duration::from_secs(90)))
        .await
        .unwrap();
    assert_eq!(second.outcome(), CancelOutcome::Requested);
    let (first, second) = (first.task.unwrap(), second.task.unwrap());
    assert_eq!(second.cancel, first.cancel, "the first request stands");
    assert_eq!(second.state(), TaskState::Running);
}

#[tokio::test]
async fn a_task_that_ignores_a_soft_cancel_is_escalated_after_the_grace_period() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = client.start(stuck_sleep()).await.unwrap();
    client
        .soft_cancel(&task.id, "stop please", Some(Duration::from_millis(300)))
        .await
        .unwrap();
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Cancelled);
    let cancel = done.cancel.unwrap();
    assert!(cancel.escalated);
    assert_eq!(cancel.mode(), CancelMode::Hard);
    assert_eq!(cancel.reason, "stop please");
    let finished = seconds(done.finished_at.as_ref().unwrap());
    assert!(
        finished >= seconds(cancel.grace_deadline.as_ref().unwrap()),
        "not before the deadline"
    );
}

#[tokio::test]
async fn hard_cancel_ends_the_task_when_the_call_returns_and_later_work_changes_nothing() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = start_sleep(&client, 10_000, 5).await;
    wait_checkpoints(&client, &task.id, 3).await;
    let response = client.hard_cancel(&task.id, "now").await.unwrap();
    assert_eq!(response.outcome(), CancelOutcome::Cancelled);
    let cancelled = response.task.unwrap();
    assert_eq!(cancelled.state(), TaskState::Cancelled);
    let cancel = cancelled.cancel.clone().unwrap();
    assert_eq!(
        (cancel.mode(), cancel.reason.as_str()),
        (CancelMode::Hard, "now")
    );

    // The code took a step every 5 ms; had it survived, 40 steps would have passed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later = client.check(&task.id).await.unwrap();
    assert_eq!(later.version, cancelled.version, "version stays put");
    assert_eq!(later.partial_results.len(), cancelled.partial_results.len());
}

#[tokio::test]
async fn cancelling_a_finished_task_reports_it_and_leaves_the_record_untouched() {
    let server = Reinsd::start();
    let client = server.client().await;
    let completed = start_sleep(&client, 0, 0).await;
    let failed = client
        .start(StartTask::new("sleep").params(json!({"steps": 1, "step_ms": 0, "fail_at_step": 1})))
        .await
        .unwrap();
    let cancelled = client.start(long_sleep()).await.unwrap();
    client.hard_cancel(&cancelled.id, "first").await.unwrap();
    for (task, expected) in [
        (&completed, CancelOutcome::AlreadyFinished),
        (&failed, CancelOutcome::AlreadyFinished),
        (&cancelled, CancelOutcome::AlreadyCancelled),
    ] {
        let before = wait_finished(&client, &task.id).await;
        let soft = client.soft_cancel(&task.id, "again", None).await.unwrap();
        let hard = client.hard_cancel(&task.id, "again").await.unwrap();
        assert_eq!(
            (soft.outcome(), hard.outcome()),
            (expected, expected),
            "{:?}",
            before.state()
        );
        assert_eq!(
            client.check(&task.id).await.unwrap(),
            before,
            "record untouched"
        );
    }
}

#[tokio::test]
async fn completion_and_cancel_races_end_in_exactly_one_terminal_state() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut races = Vec::new();
    for i in 0..60u64 {
        let client = client.clone();
        races.push(tokio::spawn(async move {
            let task = start_sleep(&client, 1, i % 6).await;
            tokio::time::sleep(Duration::from_millis(i % 7)).await;
            let response = if i % 2 == 0 {
                client.hard_cancel(&task.id, "race").await.unwrap()
            } else {
                client.soft_cancel(&task.id, "race", None).await.unwrap()
            };
            (task.id, response.outcome())
        }));
    }
    for race in races {
        let (id, outcome) = race.await.unwrap();
        let done = wait_finished(&client, &id).await;
        match outcome {
            CancelOutcome::Cancelled => assert_eq!(done.state(), TaskState::Cancelled),
            CancelOutcome::AlreadyFinished => assert_eq!(done.state(), TaskState::Completed),
            // A soft cancel may be overtaken by completion: it is reported honestly.
            CancelOutcome::Requested => assert!(matches!(
                done.state(),
                TaskState::Cancelled | TaskState::Completed
            )),
            other => panic!("unexpected outcome {other:?}"),
        }
        let again = client.check(&id).await.unwrap();
        assert_eq!(again, done, "the first terminal state stays");
    }
}

/// parent ─┬─ child ── grandchild
///         └─ detached child
async fn family(client: &Client) -> (Task, Task, Task, Task) {
    let parent = client.start(stuck_sleep()).await.unwrap();
    let child = client.start(long_sleep().parent(&parent.id)).await.unwrap();
    let grandchild = client.start(long_sleep().parent(&child.id)).await.unwrap();
    let detached = client
        .start(long_sleep().parent(&parent.id).detached(true))
        .await
        .unwrap();
    (parent, child, grandchild, detached)
}

#[tokio::test]
async fn hard_cancel_takes_the_whole_subtree_with_it() {
    let server = Reinsd::start();
    let client = server.client().await;
    let (parent, child, grandchild, detached) = family(&client).await;
    client.hard_cancel(&parent.id, "tear down").await.unwrap();
    for task in [&child, &grandchild, &detached] {
        let now = client.check(&task.id).await.unwrap();
        assert_eq!(
            now.state(),
            TaskState::Cancelled,
            "cancelled when the call returns"
        );
        let cancel = now.cancel.unwrap();
        assert_eq!(cancel.mode(), CancelMode::Hard);
        assert_eq!(
            cancel.reason,
            format!("ancestor {} cancelled: tear down", parent.id)
        );
    }
}

#[tokio::test]
async fn soft_cancel_asks_the_whole_subtree_in_the_same_mode() {
    let server = Reinsd::start();
    let client = server.client().await;
    let (parent, child, grandchild, _) = family(&client).await;
    let grace = Some(Duration::from_millis(500));
    client
        .soft_cancel(&parent.id, "wrap up", grace)
        .await
        .unwrap();
    for task in [&child, &grandchild] {
        let done = wait_finished(&client, &task.id).await;
        assert_eq!(done.state(), TaskState::Cancelled);
        let cancel = done.cancel.unwrap();
        assert_eq!(cancel.mode(), CancelMode::Soft, "stopped cooperatively");
        assert_eq!(
            cancel.reason,
            format!("ancestor {} cancelled: wrap up", parent.id)
        );
    }
    // The parent ignores soft cancels: it is escalated.
    let parent = wait_finished(&client, &parent.id).await;
    assert!(parent.cancel.unwrap().escalated);
}

#[tokio::test]
async fn a_finished_parent_releases_its_attached_children_but_not_detached_ones() {
    let server = Reinsd::start();
    let client = server.client().await;
    let parent = start_sleep(&client, 1, 200).await;
    let child = client.start(long_sleep().parent(&parent.id)).await.unwrap();
    let detached = client
        .start(long_sleep().parent(&parent.id).detached(true))
        .await
        .unwrap();
    assert_eq!(
        wait_finished(&client, &parent.id).await.state(),
        TaskState::Completed
    );

    let child = wait_finished(&client, &child.id).await;
    assert_eq!(child.state(), TaskState::Cancelled);
    let cancel = child.cancel.unwrap();
    assert_eq!(cancel.mode(), CancelMode::Soft);
    assert_eq!(cancel.reason, format!("parent {} finished", parent.id));

    let detached = client.check(&detached.id).await.unwrap();
    assert_eq!(
        detached.state(),
        TaskState::Running,
        "a detached child lives on"
    );
    assert!(detached.cancel.is_none());
}

#[tokio::test]
async fn a_task_past_its_timeout_fails_with_deadline_exceeded_keeping_partial_results() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = client
        .start(long_sleep().timeout(Duration::from_millis(300)))
        .await
        .unwrap();
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Failed);
    assert_eq!(done.error, "deadline exceeded");
    assert!(!done.partial_results.is_empty());
    let cancel = done.cancel.unwrap();
    assert!(cancel.deadline_exceeded);
    assert!(!cancel.escalated, "it stopped by itself");
}

#[tokio::test]
async fn a_stuck_task_past_its_timeout_is_escalated_and_still_fails() {
    let server = Reinsd::with_args(&["--default-grace", "300ms"]);
    let client = server.client().await;
    let task = client
        .start(stuck_sleep().timeout(Duration::from_millis(200)))
        .await
        .unwrap();
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(
        (done.state(), done.error.as_str()),
        (TaskState::Failed, "deadline exceeded")
    );
    let cancel = done.cancel.unwrap();
    assert!(cancel.escalated && cancel.deadline_exceeded);
}
