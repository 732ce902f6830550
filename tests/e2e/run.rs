//! RunTask: a call that starts a task, streams it like WatchTask, and stops it when the
//! caller goes away — unless another tied call of it remains ("last watcher leaves").

use std::time::Duration;

use reins_client::proto::{RunTaskRequest, StartTaskRequest, TaskState};
use reins_client::{Client, StartTask, WatchOptions};
use reins_e2e::{Reinsd, bad_fields, eventually, long_sleep, sleep_params, wait_finished};
use tokio_stream::StreamExt;
use tonic::Code;

/// Waits until the task is asked to stop; returns the cancel's reason.
async fn cancel_reason(client: &Client, id: &str) -> String {
    eventually("the cancel", || async {
        client.check(id).await.unwrap().cancel.map(|c| c.reason)
    })
    .await
}

/// The task stays uncancelled while nothing should cancel it (a bounded look).
async fn still_uncancelled(client: &Client, id: &str) {
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let task = client.check(id).await.unwrap();
        assert!(task.cancel.is_none(), "cancelled: {:?}", task.cancel);
    }
}

#[tokio::test]
async fn a_run_streams_the_task_to_its_end() {
    let server = Reinsd::start();
    let client = server.client().await;
    let events = client
        .run(StartTask::new("sleep").params(sleep_params(3, 10)), false)
        .await
        .unwrap();
    let tasks: Vec<_> = events
        .map(|event| event.unwrap().task.unwrap())
        .collect()
        .await;
    let versions: Vec<u64> = tasks.iter().map(|task| task.version).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    assert_eq!(tasks.last().unwrap().state(), TaskState::Completed);
}

#[tokio::test]
async fn hanging_up_soft_cancels_unless_asked_to_continue() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut events = client.run(long_sleep(), false).await.unwrap();
    let id = events.next().await.unwrap().unwrap().task.unwrap().id;
    drop(events);
    assert_eq!(cancel_reason(&client, &id).await, "caller disconnected");
    assert_eq!(
        wait_finished(&client, &id).await.state(),
        TaskState::Cancelled
    );

    let mut events = client.run(long_sleep(), true).await.unwrap();
    let id = events.next().await.unwrap().unwrap().task.unwrap().id;
    drop(events);
    still_uncancelled(&client, &id).await;
    client.hard_cancel(&id, "done").await.unwrap();
}

#[tokio::test]
async fn the_callers_deadline_ends_the_run_and_cancels_the_task() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut request = tonic::Request::new(RunTaskRequest {
        task: Some(long_sleep().into()),
        continue_on_disconnect: false,
    });
    request.set_timeout(Duration::from_millis(300));
    let mut events = client.raw().run_task(request).await.unwrap().into_inner();
    let id = events.message().await.unwrap().unwrap().task.unwrap().id;
    let ended = loop {
        match events.message().await {
            Ok(Some(_)) => {}
            other => break other,
        }
    };
    assert_eq!(ended.unwrap_err().code(), Code::DeadlineExceeded);
    drop(events);
    assert_eq!(cancel_reason(&client, &id).await, "caller disconnected");
}

#[tokio::test]
async fn a_reattached_run_keeps_the_task_until_the_last_watcher_leaves() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = || long_sleep().request_id("run-1");
    let mut first = client.run(task(), false).await.unwrap();
    let id = first.next().await.unwrap().unwrap().task.unwrap().id;
    let mut second = client.run(task(), false).await.unwrap();
    assert_eq!(
        second.next().await.unwrap().unwrap().task.unwrap().id,
        id,
        "re-attached"
    );
    // A tied watch counts as well.
    let options = WatchOptions {
        cancel_on_disconnect: true,
        ..WatchOptions::default()
    };
    let mut watch = client.watch(&id, options).await.unwrap();
    watch.next().await.unwrap().unwrap();
    drop(first);
    still_uncancelled(&client, &id).await;
    drop(second);
    still_uncancelled(&client, &id).await;
    drop(watch);
    assert_eq!(cancel_reason(&client, &id).await, "watcher disconnected");
}

/// Runs the short task of request id `short` (starting it or re-attaching) and collects
/// every version the run streams.
async fn short_run_to_its_end(client: &Client) -> Vec<reins_client::proto::Task> {
    let events = client
        .run(
            StartTask::new("sleep")
                .params(sleep_params(1, 1))
                .request_id("short"),
            false,
        )
        .await
        .unwrap();
    events
        .map(|event| event.unwrap().task.unwrap())
        .collect()
        .await
}

#[tokio::test]
async fn a_run_that_saw_the_end_cancels_nothing_and_bad_runs_name_the_field() {
    let server = Reinsd::start();
    let client = server.client().await;
    let last = short_run_to_its_end(&client).await;
    let done = last.last().unwrap();
    assert_eq!(done.state(), TaskState::Completed);
    // Re-attaching to a finished task replays its end.
    let again = short_run_to_its_end(&client).await;
    assert_eq!(again.last().unwrap().id, done.id);
    assert_eq!(again.last().unwrap().state(), TaskState::Completed);

    let status = client
        .raw()
        .run_task(RunTaskRequest::default())
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["task"]);
    let status = client
        .raw()
        .run_task(RunTaskRequest {
            task: Some(StartTaskRequest::default()),
            continue_on_disconnect: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["task.kind"]);
}
