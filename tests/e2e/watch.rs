//! WatchTask: snapshot first, then every change in version order, closing OK after the
//! terminal state; `cancel_on_disconnect`; resuming with `after_version`.

use reins_client::WatchOptions;
use reins_client::proto::{CancelMode, Task, TaskEvent, TaskState, TaskView};
use reins_e2e::{
    PATIENCE, Reinsd, asking, long_sleep, reason, resume_after, start_sleep, wait_finished,
    wait_for, wait_state,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Status};

/// Watch options that tie the task to the watch: hanging up before the end soft-cancels it.
fn tied() -> WatchOptions {
    WatchOptions {
        cancel_on_disconnect: true,
        ..WatchOptions::default()
    }
}

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
    let mut events = client.watch(&task.id, tied()).await.unwrap();
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

/// The versions a watch sends up to its end, which must be OK.
async fn to_the_end(events: impl Stream<Item = Result<TaskEvent, Status>>) -> Vec<Task> {
    let events: Vec<_> = tokio::time::timeout(PATIENCE, events.collect())
        .await
        .expect("the watch to end");
    events
        .into_iter()
        .map(|event| {
            event
                .expect("the stream ends OK, not with an error")
                .task
                .expect("event task")
        })
        .collect()
}

#[tokio::test]
async fn a_tied_watcher_that_stays_to_the_end_cancels_nothing() {
    // A cancel sent on the hang-up after the end could not show on the watched task: a
    // finished task is never changed. So it is given places to land: a detached child of
    // the watched task (it outlives its parent unless someone cancels the subtree) and a
    // neighbour, waiting for an answer and tied to a second watch on the same connection.
    let server = Reinsd::start();
    let client = server.client().await;
    let watched = client.start(asking("finish?")).await.unwrap();
    let child = client
        .start(long_sleep().parent(&watched.id).detached(true))
        .await
        .unwrap();
    let neighbour = client.start(asking("still there?")).await.unwrap();
    wait_state(&client, &watched.id, TaskState::WaitingForAnswer).await;
    wait_state(&client, &neighbour.id, TaskState::WaitingForAnswer).await;
    wait_state(&client, &child.id, TaskState::Running).await;
    let neighbour_events = client.watch(&neighbour.id, tied()).await.unwrap();

    let mut events = client.watch(&watched.id, tied()).await.unwrap();
    let first = events.next().await.unwrap().unwrap().task.unwrap();
    assert_eq!(first.state(), TaskState::WaitingForAnswer);
    client.answer(&watched.id, "yes").await.unwrap();
    let last = to_the_end(events)
        .await
        .pop()
        .expect("events after the answer");
    assert_eq!(last.state(), TaskState::Completed);

    // A tied watcher hanging up before the end, on a connection of its own, after the
    // hang-up above: once its cancel has taken effect, a cancel sent by that earlier
    // hang-up would have too.
    let other = server.client().await;
    let marker = other.start(long_sleep()).await.unwrap();
    let mut marker_events = other.watch(&marker.id, tied()).await.unwrap();
    marker_events.next().await.unwrap().unwrap();
    drop(marker_events);
    let marker = wait_finished(&other, &marker.id).await;
    assert_eq!(marker.state(), TaskState::Cancelled, "{marker:?}");
    assert_eq!(marker.cancel.unwrap().reason, "watcher disconnected");

    // The neighbour then finishes on its own, watched to its end: never cancelled.
    let answered = client.answer(&neighbour.id, "yes").await;
    let seen = to_the_end(neighbour_events).await;
    let cancelled: Vec<&Task> = seen.iter().filter(|task| task.cancel.is_some()).collect();
    assert!(
        cancelled.is_empty(),
        "the neighbour was cancelled: {cancelled:?}"
    );
    answered.expect("the neighbour still waited for its answer");
    assert_eq!(seen.last().map(Task::state), Some(TaskState::Completed));

    let child = client.check(&child.id).await.unwrap();
    assert_eq!(
        (child.state(), &child.cancel),
        (TaskState::Running, &None),
        "the detached child runs on, uncancelled"
    );
    // Its detached child's steps go on adding to its subtree usage without a new version
    // (see Task.subtree_usage); everything else is as its last event showed it.
    let without_subtree = |mut task: Task| {
        task.subtree_usage.clear();
        task
    };
    assert_eq!(
        without_subtree(client.check(&watched.id).await.unwrap()),
        without_subtree(last),
        "the watched task is as its last event showed it"
    );
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

/// A replica encodes each version once per view and shares it among the task's watchers:
/// FULL and BASIC watchers of one task, watching at once, each get every version in their
/// own view, the FULL ones exactly the task as CheckTask returns it.
#[tokio::test]
async fn watchers_in_both_views_get_every_version_each_in_their_own_view() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = start_sleep(&client, 3, 100).await;
    let basic = WatchOptions {
        view: TaskView::Basic,
        ..WatchOptions::default()
    };
    let full_view = WatchOptions::default();
    let (full, basic, full_again, basic_again) = tokio::join!(
        to_the_end(client.watch(&task.id, full_view).await.unwrap()),
        to_the_end(client.watch(&task.id, basic).await.unwrap()),
        to_the_end(client.watch(&task.id, full_view).await.unwrap()),
        to_the_end(client.watch(&task.id, basic).await.unwrap()),
    );
    let done = client.check(&task.id).await.unwrap();
    for versions in [&full, &full_again] {
        assert_eq!(
            versions.last(),
            Some(&done),
            "FULL: the task as CheckTask has it"
        );
        assert!(versions.iter().all(|task| task.params.is_some()));
    }
    for versions in [&basic, &basic_again] {
        let last = versions.last().expect("events");
        assert_eq!(last.state(), TaskState::Completed);
        assert!(
            versions
                .iter()
                .all(|task| task.params.is_none() && task.result.is_none())
        );
    }
    let in_basic = |task: &Task| Task {
        params: None,
        partial_results: Vec::new(),
        result: None,
        ..task.clone()
    };
    for (full, basic) in [(&full, &basic), (&full_again, &basic_again)] {
        for seen in basic {
            if let Some(same) = full.iter().find(|task| task.version == seen.version) {
                assert_eq!(&in_basic(same), seen, "version {}", seen.version);
            }
        }
    }
}

/// A raw WatchTask call (no client-side filtering of heartbeats), with `grpc-timeout` set
/// as a header only, so that only the server can enforce it.
async fn raw_watch(
    server: &Reinsd,
    id: &str,
    cancel_on_disconnect: bool,
    grpc_timeout: Option<&str>,
) -> tonic::Streaming<TaskEvent> {
    let mut request = tonic::Request::new(reins_client::proto::WatchTaskRequest {
        task_id: id.to_owned(),
        cancel_on_disconnect,
        ..Default::default()
    });
    if let Some(timeout) = grpc_timeout {
        request
            .metadata_mut()
            .insert("grpc-timeout", timeout.parse().unwrap());
    }
    server
        .client()
        .await
        .raw()
        .watch_task(request)
        .await
        .expect("watch")
        .into_inner()
}

#[tokio::test]
async fn a_quiet_watch_gets_heartbeats_that_repeat_the_last_version() {
    let server = Reinsd::with_args(&["--watch-heartbeat", "200ms"]);
    let client = server.client().await;
    let task = client.start(asking("Which colour?")).await.unwrap();
    let waiting = wait_state(&client, &task.id, TaskState::WaitingForAnswer).await;
    let mut events = raw_watch(&server, &task.id, false, None).await;
    let first = events.next().await.unwrap().unwrap();
    assert!(!first.heartbeat);
    assert_eq!(first.task.as_ref().unwrap().version, waiting.version);
    for _ in 0..2 {
        let beat = tokio::time::timeout(PATIENCE, events.next())
            .await
            .expect("a heartbeat while nothing changes")
            .unwrap()
            .unwrap();
        assert!(beat.heartbeat, "{beat:?}");
        assert_eq!(
            beat.task, first.task,
            "a heartbeat repeats the last version"
        );
    }
    // The typed client skips heartbeats: every event it yields is a new version.
    let mut typed = client
        .watch(&task.id, WatchOptions::default())
        .await
        .unwrap();
    let now = typed.next().await.unwrap().unwrap();
    client.answer(&task.id, "blue").await.unwrap();
    let next = typed.next().await.unwrap().unwrap();
    assert_eq!(
        next.task.unwrap().version,
        now.task.unwrap().version + 1,
        "no heartbeat in between"
    );
}

#[tokio::test]
async fn a_watch_ends_with_deadline_exceeded_at_the_clients_deadline() {
    let server = Reinsd::start();
    let client = server.client().await;
    let plain = client.start(asking("plain?")).await.unwrap();
    let tied_task = client.start(asking("tied?")).await.unwrap();
    for task in [&plain, &tied_task] {
        wait_state(&client, &task.id, TaskState::WaitingForAnswer).await;
    }
    let mut plain_events = raw_watch(&server, &plain.id, false, Some("1S")).await;
    let mut tied_events = raw_watch(&server, &tied_task.id, true, Some("1S")).await;
    for events in [&mut plain_events, &mut tied_events] {
        let ended = tokio::time::timeout(PATIENCE, async {
            loop {
                match events.next().await {
                    Some(Ok(_)) => continue,
                    Some(Err(status)) => return status,
                    None => panic!("the stream ended without a status"),
                }
            }
        })
        .await
        .expect("the server ends the stream at the deadline");
        assert_eq!(ended.code(), Code::DeadlineExceeded, "{ended:?}");
    }
    // A tied watch whose deadline passed counts as a watcher that hung up.
    let cancelled = wait_state(&client, &tied_task.id, TaskState::Cancelled).await;
    assert_eq!(cancelled.cancel.unwrap().reason, "watcher disconnected");
    assert_eq!(
        client.check(&plain.id).await.unwrap().state(),
        TaskState::WaitingForAnswer,
        "an untied watch's deadline cancels nothing"
    );
}
