//! Records stay bounded whatever a task reports: checkpoints are kept within
//! `--max-checkpoints` / `--max-checkpoint-bytes` (the oldest dropped and counted), every
//! read of a task fits in a message, and ListActive returns the BASIC view by default.

use std::time::Duration;

use reins_client::proto::{ListActiveRequest, Task, TaskState, TaskView};
use reins_client::{Client, StartTask, WatchOptions};
use reins_e2e::{
    FakeWorker, Reinsd, eventually, json_of, on_redis, sleep_params, wait_finished, wait_for,
    wait_state,
};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

fn checkpoints(task: &Task) -> Vec<Value> {
    task.partial_results
        .iter()
        .map(|value| json_of(Some(value)))
        .collect()
}

/// Steps of the long sleeps: fewer on Redis, where each step costs round trips.
fn many_steps() -> u64 {
    if on_redis() { 1500 } else { 3000 }
}

/// The finished task, polled (BASIC, cheap) with a deadline longer than the harness's:
/// thousands of steps take a while on a shared machine.
async fn finished_within(client: &Client, id: &str, within: Duration) -> Task {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let task = client.check_view(id, TaskView::Basic).await.unwrap();
        if task.state().is_terminal() {
            return client.check(id).await.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} not finished within {within:?}: {:?}",
            task.progress
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn steps(from: u64, to: u64) -> Vec<Value> {
    (from..=to).map(|step| json!({ "step": step })).collect()
}

#[tokio::test]
async fn a_sleep_with_thousands_of_steps_keeps_only_the_newest_checkpoints() {
    let server = Reinsd::with_args(&["--max-checkpoints", "50"]);
    let client = server.client().await;
    let n = many_steps();
    let task = StartTask::new("sleep").params(sleep_params(n, 0));
    let started = client.start(task).await.unwrap();
    let done = finished_within(&client, &started.id, Duration::from_secs(120)).await;
    assert_eq!(done.state(), TaskState::Completed, "{:?}", done.error);
    assert_eq!(
        checkpoints(&done),
        steps(n - 49, n),
        "the newest 50, oldest first"
    );
    assert_eq!(done.partial_results_dropped, n - 50);
}

/// The embedded store took 1.3 GB for 10,000 steps: every version copied the whole list.
#[tokio::test]
async fn thousands_of_checkpoints_leave_the_servers_memory_bounded() {
    let server = Reinsd::start();
    let client = server.client().await;
    let warm_up = client
        .start(StartTask::new("sleep").params(sleep_params(10, 0)))
        .await
        .unwrap();
    wait_finished(&client, &warm_up.id).await;
    let before = server.rss_kib();
    let n = many_steps();
    let task = StartTask::new("sleep").params(sleep_params(n, 0));
    let started = client.start(task).await.unwrap();
    let done = finished_within(&client, &started.id, Duration::from_secs(120)).await;
    assert_eq!(done.state(), TaskState::Completed);
    let after = server.rss_kib();
    // 1000 small checkpoints shared by 100 versions take well under a MiB; copying the
    // list into every version took hundreds of MiB. The bound is generous on purpose.
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert_eq!(
        checkpoints(&done),
        steps(n - 999, n),
        "--max-checkpoints defaults to 1000"
    );
    assert_eq!(done.partial_results_dropped, n - 1000);
}

/// Ten 500 kB checkpoints made a ~5 MB record that no read could return.
#[tokio::test]
async fn a_task_with_huge_checkpoints_stays_readable_everywhere() {
    let server = Reinsd::with_args(&["--allow-exec", "sh"]);
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let script = r#"i=0
        while [ $i -lt 10 ]; do
          printf '::checkpoint:: "%s"\n' "$(head -c 500000 /dev/zero | tr '\0' x)"
          i=$((i+1))
        done
        echo '::progress:: 0.5 all written'
        while [ ! -e gate ]; do sleep 0.02; done"#;
    let task =
        StartTask::new("exec").params(json!({ "argv": ["sh", "-c", script], "cwd": dir.path() }));
    let started = client.start(task).await.unwrap();
    let id = started.id.clone();
    let running = eventually("all ten checkpoints", || {
        let client = client.clone();
        let id = id.clone();
        async move {
            let task = client.check(&id).await.expect("CheckTask returns the task");
            (task.partial_results.len() as u64 + task.partial_results_dropped == 10).then_some(task)
        }
    })
    .await;
    assert_eq!(
        running.partial_results.len(),
        2,
        "two of 500 kB fit in 1 MiB"
    );
    assert_eq!(running.partial_results_dropped, 8);
    let bytes: usize = checkpoints(&running)
        .iter()
        .map(|value| value.to_string().len())
        .sum();
    assert!(bytes <= 1024 * 1024, "{bytes} bytes of checkpoints");

    let mut events = client.watch(&id, WatchOptions::default()).await.unwrap();
    let first = events
        .next()
        .await
        .unwrap()
        .expect("WatchTask sends the task");
    assert_eq!(first.task.unwrap().partial_results.len(), 2);

    let basic = client.list(ListActiveRequest::default()).await.unwrap();
    assert_eq!(basic.tasks.len(), 1);
    let full = client
        .list(ListActiveRequest {
            view: TaskView::Full as i32,
            ..ListActiveRequest::default()
        })
        .await
        .expect("a FULL page fits too");
    assert_eq!(full.tasks[0].partial_results.len(), 2);

    let cancelled = client.hard_cancel(&id, "enough").await.unwrap();
    let cancelled = cancelled.task.expect("HardCancel returns the task");
    assert_eq!(cancelled.state(), TaskState::Cancelled);
    assert_eq!(cancelled.partial_results.len(), 2);
}

#[tokio::test]
async fn list_active_returns_the_basic_view_unless_asked_for_full() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = StartTask::new("sleep").params(sleep_params(10_000, 20));
    let started = client.start(task).await.unwrap();
    let running = wait_state(&client, &started.id, TaskState::Running).await;
    let id = running.id.clone();
    eventually("a checkpoint", || {
        let client = client.clone();
        let id = id.clone();
        async move {
            let task = client.check(&id).await.unwrap();
            (!task.partial_results.is_empty()).then_some(())
        }
    })
    .await;

    let basic = client.list(ListActiveRequest::default()).await.unwrap();
    let listed = &basic.tasks[0];
    assert_eq!(listed.id, id);
    assert!(listed.params.is_none(), "BASIC has no params");
    assert!(
        listed.partial_results.is_empty(),
        "BASIC has no partial results"
    );
    assert!(listed.result.is_none());
    assert_eq!(listed.state(), TaskState::Running, "the rest is there");
    assert!(listed.version > 0);

    let full = client
        .list(ListActiveRequest {
            view: TaskView::Full as i32,
            ..ListActiveRequest::default()
        })
        .await
        .unwrap();
    assert!(full.tasks[0].params.is_some());
    assert!(!full.tasks[0].partial_results.is_empty());

    let checked = client.check(&id).await.unwrap();
    assert!(checked.params.is_some(), "CheckTask is FULL by default");
    let checked = client.check_view(&id, TaskView::Basic).await.unwrap();
    assert!(checked.params.is_none() && checked.partial_results.is_empty());

    let watch_basic = WatchOptions {
        view: TaskView::Basic,
        ..WatchOptions::default()
    };
    let mut events = client.watch(&id, watch_basic).await.unwrap();
    let event = events.next().await.unwrap().unwrap().task.unwrap();
    assert!(event.params.is_none() && event.partial_results.is_empty());
    let mut events = client.watch(&id, WatchOptions::default()).await.unwrap();
    let event = events.next().await.unwrap().unwrap().task.unwrap();
    assert!(event.params.is_some(), "WatchTask is FULL by default");

    let bad = client
        .list(ListActiveRequest {
            view: 7,
            ..ListActiveRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    client.hard_cancel(&id, "done").await.unwrap();
}

/// A worker's `TaskProgress.partial_result` larger than `--max-checkpoint-bytes` is not
/// kept (counted as dropped); the rest of the report applies and the task runs on.
#[tokio::test]
async fn a_workers_checkpoint_larger_than_the_budget_is_dropped_and_counted() {
    let server = Reinsd::with_args(&[
        "--max-checkpoint-bytes",
        "1000",
        "--worker-kind",
        "research",
    ]);
    let client = server.client().await;
    let mut worker = FakeWorker::connect(&server.url(), "w", &["research"], 1).await;
    let task = client.start(StartTask::new("research")).await.unwrap();
    assert_eq!(worker.expect_assign().await.id, task.id);

    worker.checkpoint(&task.id, 0.25, json!({ "page": 1 }));
    worker.checkpoint(&task.id, 0.5, json!({ "blob": "x".repeat(2000) }));
    worker.checkpoint(&task.id, 0.75, json!({ "page": 3 }));
    let seen = wait_for(&client, &task.id, "the third report", |task| {
        task.progress.as_ref().is_some_and(|p| p.fraction == 0.75)
    })
    .await;
    assert_eq!(seen.state(), TaskState::Running);
    assert_eq!(
        checkpoints(&seen),
        [json!({ "page": 1 }), json!({ "page": 3 })]
    );
    assert_eq!(seen.partial_results_dropped, 1);

    // Within the budget, the oldest make room for the newest.
    for page in 4..=40 {
        worker.checkpoint(
            &task.id,
            0.9,
            json!({ "page": page, "text": "y".repeat(80) }),
        );
    }
    let seen = wait_for(&client, &task.id, "page 40", |task| {
        task.partial_results
            .last()
            .is_some_and(|last| json_of(Some(last))["page"] == json!(40))
    })
    .await;
    let kept = checkpoints(&seen);
    let bytes: usize = kept.iter().map(|value| value.to_string().len()).sum();
    assert!(bytes <= 1000, "{bytes} bytes kept");
    assert_eq!(
        seen.partial_results_dropped + kept.len() as u64,
        40,
        "every report is kept or counted"
    );
    let pages: Vec<_> = kept.iter().map(|value| value["page"].clone()).collect();
    let first = 41 - kept.len() as u64;
    assert_eq!(
        pages,
        (first..=40).map(|page| json!(page)).collect::<Vec<_>>()
    );
}
