//! WatchTask: snapshot first, then every change in version order, closing OK after the
//! terminal state; `cancel_on_disconnect`; `after_version` not yet implemented.

use reins_client::WatchOptions;
use reins_client::proto::{CancelMode, TaskState};
use reins_e2e::{
    PATIENCE, Reinsd, reason, resume_after, start_sleep, wait_finished, wait_for, wait_state,
};
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test]
async fn a_watch_starts_with_the_task_as_it_is_and_ends_ok_after_the_terminal_state() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = start_sleep(&client, 3, 100).await;
    let now = client.check(&task.id).await.unwrap();
    let mut events = client
        .watch(&task.id, WatchOptions::default())
        .await
        .unwrap();
    let mut versions = Vec::new();
    let mut last_state = TaskState::Unspecified;
    while let Some(event) = events.next().await {
        let event = event.expect("the stream ends OK, not with an error");
        assert!(event.time.is_some());
        let task = event.task.unwrap();
        versions.push(task.version);
        last_state = task.state();
    }
    assert!(
        versions[0] >= now.version,
        "the first event is the task as it is now"
    );
    assert!(
        versions.windows(2).all(|w| w[1] == w[0] + 1),
        "in version order, no gaps: {versions:?}"
    );
    assert_eq!(
        last_state,
        TaskState::Completed,
        "the last event is the terminal state"
    );
}

#[tokio::test]
async fn watching_a_finished_task_sends_it_once_and_ends() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = start_sleep(&client, 0, 0).await;
    let done = wait_finished(&client, &task.id).await;
    let events: Vec<_> = client
        .watch(&task.id, WatchOptions::default())
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].as_ref().unwrap().task.as_ref().unwrap().version,
        done.version
    );
}

#[tokio::test]
async fn a_watcher_that_hangs_up_soft_cancels_a_task_tied_to_it() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = start_sleep(&client, 1000, 50).await;
    let options = WatchOptions {
        cancel_on_disconnect: true,
        ..WatchOptions::default()
    };
    let mut events = client.watch(&task.id, options).await.unwrap();
    events.next().await.unwrap().unwrap();
    drop(events);

    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Cancelled);
    let cancel = done.cancel.unwrap();
    assert_eq!(cancel.mode(), CancelMode::Soft);
    assert_eq!(cancel.reason, "watcher disconnected");
}

#[tokio::test]
async fn a_plain_watcher_hanging_up_leaves_the_task_running() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = start_sleep(&client, 3, 100).await;
    let mut events = client
        .watch(&task.id, WatchOptions::default())
        .await
        .unwrap();
    events.next().await.unwrap().unwrap();
    drop(events);
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Completed);
    assert!(done.cancel.is_none());
}

#[tokio::test]
async fn a_tied_watcher_that_stays_to_the_end_cancels_nothing() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = start_sleep(&client, 2, 20).await;
    let options = WatchOptions {
        cancel_on_disconnect: true,
        ..WatchOptions::default()
    };
    let events: Vec<_> = client
        .watch(&task.id, options)
        .await
        .unwrap()
        .collect()
        .await;
    let last = events
        .last()
        .unwrap()
        .as_ref()
        .unwrap()
        .task
        .clone()
        .unwrap();
    assert_eq!(last.state(), TaskState::Completed);
    // The stream ended with the task: the hang-up that follows must not touch the record.
    let again = wait_state(&client, &task.id, TaskState::Completed).await;
    assert_eq!(again.version, last.version);
}

#[tokio::test]
async fn resuming_replays_the_changes_after_a_version_then_continues_live() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = start_sleep(&client, 6, 100).await;
    wait_for(&client, &task.id, "a few versions", |task| {
        task.version >= 4
    })
    .await;
    let events: Vec<_> = client
        .watch(&task.id, resume_after(2))
        .await
        .unwrap()
        .collect()
        .await;
    let versions: Vec<u64> = events
        .iter()
        .map(|e| e.as_ref().unwrap().task.as_ref().unwrap().version)
        .collect();
    assert_eq!(
        versions[0], 3,
        "the replay starts right after the version given"
    );
    assert!(
        versions.windows(2).all(|w| w[1] == w[0] + 1),
        "{versions:?}"
    );
    let last = events
        .last()
        .unwrap()
        .as_ref()
        .unwrap()
        .task
        .clone()
        .unwrap();
    assert_eq!(last.state(), TaskState::Completed, "then live to the end");
}

#[tokio::test]
async fn resuming_after_the_last_version_of_a_finished_task_sends_nothing() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = start_sleep(&client, 1, 0).await;
    let done = wait_finished(&client, &task.id).await;
    let watch = client
        .watch(&task.id, resume_after(done.version))
        .await
        .unwrap();
    let events: Vec<_> = tokio::time::timeout(PATIENCE, watch.collect())
        .await
        .expect("the stream ends");
    assert!(events.is_empty(), "{events:?}");
}

#[tokio::test]
async fn resuming_from_before_the_kept_history_is_out_of_range() {
    let server = Reinsd::start();
    let client = server.client().await;
    // Far more versions than the history keeps.
    let task = start_sleep(&client, 300, 0).await;
    wait_finished(&client, &task.id).await;
    let status = client
        .watch(&task.id, resume_after(1))
        .await
        .err()
        .expect("an error");
    assert_eq!(status.code(), Code::OutOfRange);
    assert_eq!(reason(&status), "HISTORY_UNAVAILABLE");
}
