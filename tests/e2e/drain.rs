//! A replica drained with SIGTERM, as a rolling update does (Redis, two replicas): the
//! GOAWAY goes out at once, probes see NOT_SERVING, watches end UNAVAILABLE with their
//! trailers, unary calls are still answered, and no work is lost — a built-in task with
//! attempts left is handed back to the queue and finished elsewhere, a worker's task moves
//! with its worker to the other replica without restarting.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reins_client::proto::worker_command::Command;
use reins_client::proto::{Task, TaskState};
use reins_client::{Client, StartTask, WatchOptions};
use reins_e2e::http2::Http2Connection;
use reins_e2e::worker::{FakeWorker, Next, moving_hello};
use reins_e2e::{
    Cluster, Heartbeat, PATIENCE, channel, eventually, health, long_sleep, process_alive, reason,
    sleep_params, started, wait_finished,
};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const A: usize = 0;
const B: usize = 1;

/// A grace far longer than any wait of these tests: what must happen at once cannot be
/// waiting for it.
const LONG_GRACE: &str = "60s";
/// Slack for a busy CI machine.
const BUSY_MACHINE: Duration = Duration::from_millis(2500);
/// The short grace of the hand-back tests, then its soft window (`server/src/server.rs`)
/// and the connection drain: how long a drained replica may take to exit.
const SHORT_GRACE: Duration = Duration::from_millis(500);
const EXIT_BOUND: Duration = SHORT_GRACE
    .saturating_add(Duration::from_secs(4))
    .saturating_add(BUSY_MACHINE);

async fn start_running(client: &Client, task: StartTask) -> Task {
    let task = started(client, client.start(task).await.expect("start")).await;
    assert_eq!(task.state(), TaskState::Running, "{task:?}");
    task
}

#[tokio::test]
async fn sigterm_sends_goaway_at_once_ends_watches_unavailable_and_keeps_answering() {
    let mut cluster = Cluster::start(1, &["--shutdown-grace", LONG_GRACE]);
    let a = cluster.client(A).await;
    let task = start_running(&a, long_sleep()).await;
    let mut idle = Http2Connection::open(cluster.replica(A).address()).await;
    let mut events = a.watch(&task.id, WatchOptions::default()).await.unwrap();
    assert!(events.next().await.unwrap().is_ok(), "the watch is live");

    let signalled = Instant::now();
    cluster.replica(A).signal(Signal::SIGTERM);
    assert!(
        idle.ping_until_closed(Duration::from_millis(100)).await,
        "an open connection gets a GOAWAY"
    );
    let ended = tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("the watch ends");
    match ended {
        Some(Err(status)) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        other => panic!("the watch ended without UNAVAILABLE: {other:?}"),
    }
    assert!(
        signalled.elapsed() < PATIENCE,
        "the GOAWAY and the end of the watch waited for the grace"
    );

    // The client whose connection got the GOAWAY carries on over a new one.
    assert_eq!(a.check(&task.id).await.unwrap().state(), TaskState::Running);

    // A newcomer (a probe, a client not yet told) is still served: NOT_SERVING, a new
    // watch refused, unary calls answered.
    let probe = channel(cluster.replica(A)).await;
    assert_eq!(health(&probe, "").await, ServingStatus::NotServing);
    assert_eq!(
        health(&probe, "reins.v1.TaskService").await,
        ServingStatus::NotServing
    );
    let late = cluster.client(A).await;
    let refused = late
        .watch(&task.id, WatchOptions::default())
        .await
        .err()
        .expect("a new watch during the drain is refused");
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::Unavailable, "SHUTTING_DOWN")
    );
    assert_eq!(
        late.check(&task.id).await.unwrap().state(),
        TaskState::Running
    );
    // A unary call on the drained replica ends the drain early: nothing runs any more.
    late.hard_cancel(&task.id, "done with the test")
        .await
        .unwrap();
    let status = cluster
        .replica_mut(A)
        .wait_exit(EXIT_BOUND)
        .await
        .expect("the replica exits once nothing runs");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_rolling_restart_under_load_hands_running_tasks_back_and_loses_nothing() {
    let grace = format!("{}ms", SHORT_GRACE.as_millis());
    let mut cluster = Cluster::start(2, &["--shutdown-grace", &grace, "--max-concurrency", "3"]);
    let a = cluster.client(A).await;
    // Six tasks of about 3 s each, three attempts: some run on each replica, none fits in
    // the grace.
    let mut ids = Vec::new();
    for i in 0..6 {
        let task = StartTask::new("sleep")
            .params(sleep_params(30, 100))
            .max_attempts(3)
            .request_id(format!("rolling-{i}"));
        ids.push(a.start(task).await.unwrap().id);
    }
    for replica in [A, B] {
        let client = cluster.client(cluster.other_than(replica)).await;
        eventually("tasks running on the replica to restart", || async {
            let mut on_it = 0;
            for id in &ids {
                let task = client.check(id).await.ok()?;
                on_it += usize::from(task.owner == cluster.id(replica));
            }
            (on_it > 0).then_some(())
        })
        .await;
        cluster.replica(replica).signal(Signal::SIGTERM);
        let status = cluster
            .replica_mut(replica)
            .wait_exit(EXIT_BOUND)
            .await
            .expect("the drained replica exits");
        assert!(status.success(), "{status:?}");
        cluster.restart_replica(replica);
    }
    let client = cluster.client(A).await;
    let mut handed_back = 0;
    for id in &ids {
        let done = wait_finished(&client, id).await;
        assert_eq!(done.state(), TaskState::Completed, "{done:?}");
        handed_back += done.attempt - 1;
        // Every attempt started only after the one before it had been given back: the
        // history has no two runs at once.
        let mut events = client.watch(id, reins_e2e::resume_after(0)).await.unwrap();
        let mut running_attempt = None;
        while let Some(Ok(event)) = events.next().await {
            let version = event.task.unwrap();
            match version.state() {
                TaskState::Running => {
                    if let Some(previous) = running_attempt {
                        assert!(version.attempt >= previous, "{version:?}");
                    }
                    running_attempt = Some(version.attempt);
                }
                TaskState::Pending if running_attempt.is_some() => {
                    assert!(
                        version
                            .error
                            .contains("shut down; the task went back to the queue"),
                        "{version:?}"
                    );
                }
                _ => {}
            }
        }
    }
    assert!(handed_back > 0, "no task was handed back");
}

#[tokio::test]
async fn a_worker_moves_off_a_draining_replica_and_its_task_runs_on_without_restarting() {
    let mut cluster = Cluster::start(1, &["--shutdown-grace", LONG_GRACE]);
    let a_url = cluster.replica(A).url();
    let mut old = FakeWorker::connect(&a_url, "mover", &["research"], 2).await;
    let a = cluster.client(A).await;
    let task = a.start(StartTask::new("research")).await.unwrap();
    let assigned = old.expect_assign().await;
    old.checkpoint(&task.id, 0.3, serde_json::json!({"page": 3}));
    eventually("the checkpoint recorded", || async {
        let task = a.check(&task.id).await.ok()?;
        (task.partial_results.len() == 1).then_some(())
    })
    .await;
    cluster.add_replica();

    cluster.replica(A).signal(Signal::SIGTERM);
    old.expect_reconnect().await;
    let b_url = cluster.replica(B).url();
    let running = [(task.id.as_str(), assigned.attempt)];
    let mut moved = FakeWorker::connect_with(
        &b_url,
        "mover",
        moving_hello("mover", &["research"], 2, &running),
    )
    .await;
    assert_eq!(moved.adopted(), std::slice::from_ref(&task.id));
    old.half_close();
    let b = cluster.client(B).await;
    let adopted = b.check(&task.id).await.unwrap();
    assert_eq!(
        (adopted.state(), adopted.attempt, adopted.owner.as_str()),
        (TaskState::Running, assigned.attempt, cluster.id(B)),
        "{adopted:?}"
    );
    assert_eq!(adopted.worker, moved.label());
    assert_eq!(
        adopted.partial_results.len(),
        1,
        "the checkpoint moved along"
    );

    // The old stream carries nothing more about the task (no abort) and ends.
    match old.next_within(PATIENCE).await {
        Next::Closed(_) => {}
        Next::Command(Command::Abort(abort)) => panic!("the moved task was aborted: {abort:?}"),
        other => panic!("the old stream did not end: {other:?}"),
    }
    // The drained replica exits at once: nothing runs there any more.
    let status = cluster
        .replica_mut(A)
        .wait_exit(EXIT_BOUND)
        .await
        .expect("the drained replica exits");
    assert!(status.success(), "{status:?}");

    moved.progress(&task.id, 0.9, "nearly");
    moved.complete(&task.id, serde_json::json!("found it"));
    let done = wait_finished(&b, &task.id).await;
    assert_eq!(
        (done.state(), done.attempt),
        (TaskState::Completed, assigned.attempt),
        "{done:?}"
    );
    moved.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_worker_that_does_not_move_gets_unavailable_and_its_task_is_handed_back() {
    let grace = format!("{}ms", SHORT_GRACE.as_millis());
    let mut cluster = Cluster::start(1, &["--shutdown-grace", &grace]);
    let url = cluster.replica(A).url();
    let mut stays = FakeWorker::connect(&url, "stays", &["research"], 1).await;
    let a = cluster.client(A).await;
    let task = a
        .start(StartTask::new("research").max_attempts(2))
        .await
        .unwrap();
    stays.expect_assign().await;
    cluster.replica(A).signal(Signal::SIGTERM);
    stays.expect_reconnect().await;
    // It ignores the request: at the end of the grace its task is handed back (the worker
    // is asked to stop it), and its stream ends UNAVAILABLE with its trailers.
    let ended = loop {
        match stays.next_within(PATIENCE).await {
            Next::Command(Command::Cancel(_) | Command::Abort(_)) => {}
            Next::Closed(status) => break status,
            other => panic!("expected the stream to end, got {other:?}"),
        }
    };
    let ended = ended.expect("an error status, not OK");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    let status = cluster
        .replica_mut(A)
        .wait_exit(EXIT_BOUND)
        .await
        .expect("the drained replica exits");
    assert!(status.success(), "{status:?}");
    cluster.add_replica();
    let b = cluster.client(B).await;
    let handed_back = b.check(&task.id).await.unwrap();
    assert_eq!(
        (handed_back.state(), handed_back.attempt),
        (TaskState::Pending, 1),
        "{handed_back:?}"
    );
    assert!(
        handed_back.error.contains("went back to the queue"),
        "{handed_back:?}"
    );
}

#[tokio::test]
async fn a_handed_back_program_is_dead_before_its_next_attempt_starts() {
    let grace = format!("{}ms", SHORT_GRACE.as_millis());
    let mut cluster = Cluster::start(1, &["--shutdown-grace", &grace, "--allow-exec", "sh"]);
    let heartbeat = Heartbeat::new();
    let a = cluster.client(A).await;
    let task = start_running(&a, heartbeat.task().max_attempts(2)).await;
    heartbeat.wait_beating().await;
    let first = heartbeat.pid().await;
    cluster.add_replica();
    let b = cluster.client(B).await;
    cluster.replica(A).signal(Signal::SIGTERM);
    // Attempt 2 on b: by the time its RUNNING version exists, attempt 1's program is gone
    // (the hand-back stops the code before it gives the task back).
    let mut events = b.watch(&task.id, WatchOptions::default()).await.unwrap();
    let second = loop {
        let event = tokio::time::timeout(PATIENCE, events.next())
            .await
            .expect("the next attempt starts")
            .expect("the watch goes on")
            .unwrap();
        let version = event.task.unwrap();
        if version.attempt == 2 && version.state() == TaskState::Running {
            break version;
        }
    };
    assert!(
        !process_alive(first),
        "attempt 1's program (pid {first}) still runs"
    );
    assert_eq!(second.owner, cluster.id(B));
    b.hard_cancel(&task.id, "done").await.unwrap();
}
