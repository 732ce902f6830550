//! Faults of a deployment on Redis: a replica killed (-9), frozen (a partition: it comes
//! back fenced), restarted or rolled, and Redis itself going away for a while.
//!
//! Where a lost replica must be noticed, leases are short ([`LEASE_TTL`]); the time bounds
//! follow from the lease and the server's other limits (see the constants). Tasks that must
//! run on replica A are started while A is alone (a freshly queued task may be taken by any
//! idle replica); B joins afterwards.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use reins_client::proto::{
    CancelMode, CancelOutcome, ListActiveRequest, Task, TaskEvent, TaskState,
};
use reins_client::{Client, StartTask};
use reins_e2e::{
    Cluster, FakeWorker, Heartbeat, PATIENCE, RedisServer, eventually, json_of, long_sleep,
    process_alive, reason, resume_after, sleep_params, started, stuck_sleep, system_time,
    wait_finished,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Status};

const A: usize = 0;
const B: usize = 1;

// Time bounds. Each follows from a rule of the server, named where it is applied, plus
// `BUSY_MACHINE`; the server's own constants are mirrored here (the tests drive the
// `reinsd` binary and do not link the server crate).

/// Slack added to every bound that the rules give: the CI machine is shared and busy.
const BUSY_MACHINE: Duration = Duration::from_millis(2500);

/// The short lease of the tests where a lost replica must be noticed (the default is 10 s).
const LEASE_TTL: Duration = Duration::from_secs(1);
/// How long the survivors may take to settle the tasks of a lost replica. A replica renews
/// its lease every third of a TTL, so the lease of one that is lost lapses within one TTL;
/// a survivor's reaper looks every half TTL (and judges nobody during its own first TTL,
/// which has run out by then for a survivor started before the loss): 1.5 TTL.
const SETTLE_BOUND: Duration = fraction(LEASE_TTL, 3, 2).saturating_add(BUSY_MACHINE);
/// A lease so long that no survivor settles the tasks of a replica killed in the test. Its
/// last renewal was at most a third of a TTL before the kill, so the survivors would act
/// 2/3 of a TTL after it at the earliest; the test is over long before: the kill is seen
/// within `PATIENCE`, and the restarted replica settles within `SETTLE_BOUND`.
const LONG_LEASE_TTL: Duration = PATIENCE.saturating_mul(3);
const _: () = assert!(
    fraction(LONG_LEASE_TTL, 2, 3).as_millis() > PATIENCE.saturating_add(SETTLE_BOUND).as_millis()
);

/// The Redis store's limits on one command (`server/src/store/redis.rs`): a connection
/// attempt may take `STORE_CONNECT_TIMEOUT`; a failed one is retried once, after at most
/// `STORE_RETRY_DELAY`; a reply may take `STORE_RESPONSE_TIMEOUT`.
const STORE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const STORE_RETRY_DELAY: Duration = Duration::from_secs(1);
const STORE_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the store tries to reconnect for one command: two attempts and the delay
/// between them.
const STORE_RECONNECT_BUDGET: Duration = STORE_CONNECT_TIMEOUT
    .saturating_mul(2)
    .saturating_add(STORE_RETRY_DELAY);
/// How long a call may take while Redis is down: it must fail, not hang. The first store
/// command of the call fails it, after at most the reconnect budget and a reply's timeout.
const FAIL_FAST_BOUND: Duration = STORE_RECONNECT_BUDGET
    .saturating_add(STORE_RESPONSE_TIMEOUT)
    .saturating_add(BUSY_MACHINE);
/// How long Redis stays down after the calls made during the outage have failed: one more
/// reconnect budget, so that the reconnect attempts of the replicas' own commands (lease
/// renewals, resubscriptions) give up too and the replicas must come back by themselves.
const SUSTAINED_OUTAGE: Duration = STORE_RECONNECT_BUDGET;
/// A lease that outlasts the outage, which lasts at most `FAIL_FAST_BOUND` (the calls made
/// during it run at once) and `SUSTAINED_OUTAGE`. Renewed every third of a TTL, a lease
/// must last from the last renewal before the outage to the first one after it: more than
/// three outages. (Were it to lapse, the reapers would still hold off for one TTL after
/// the outage, in which the replicas renew; the test does not lean on that.)
const OUTAGE_LEASE_TTL: Duration = FAIL_FAST_BOUND
    .saturating_add(SUSTAINED_OUTAGE)
    .saturating_mul(3);

/// The rolling restart's `--shutdown-grace`.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// After the grace, tasks still running get `SHUTDOWN_SOFT_WINDOW` to stop before they are
/// hard-cancelled, then open calls get `CONNECTION_DRAIN` (`server/src/server.rs`).
const SHUTDOWN_SOFT_WINDOW: Duration = Duration::from_secs(2);
const CONNECTION_DRAIN: Duration = Duration::from_secs(2);
/// How long a replica may take to exit on SIGTERM: its shutdown grace, the soft window and
/// the drain.
const EXIT_BOUND: Duration = SHUTDOWN_GRACE
    .saturating_add(SHUTDOWN_SOFT_WINDOW)
    .saturating_add(CONNECTION_DRAIN)
    .saturating_add(BUSY_MACHINE);

/// `numerator / denominator` of `duration`.
const fn fraction(duration: Duration, numerator: u32, denominator: u32) -> Duration {
    let nanos = duration.as_nanos() * numerator as u128 / denominator as u128;
    Duration::from_nanos(nanos as u64)
}

/// A duration as a `reinsd` flag value (the server parses it with humantime).
fn flag(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

/// The error of a task whose replica `i` was lost.
fn lost(cluster: &Cluster, i: usize) -> String {
    format!("replica {} was lost while running the task", cluster.id(i))
}

/// Starts `task` through `client` and returns it once it runs.
async fn start_running(client: &Client, task: StartTask) -> Task {
    let task = started(client, client.start(task).await.expect("start")).await;
    assert_eq!(task.state(), TaskState::Running, "{task:?}");
    task
}

/// Runs a short `sleep` task through `client` to its end.
async fn finished_task(client: &Client) -> Task {
    let task = client
        .start(StartTask::new("sleep").params(sleep_params(1, 0)))
        .await
        .expect("start");
    let done = wait_finished(client, &task.id).await;
    assert_eq!(done.state(), TaskState::Completed, "{done:?}");
    done
}

fn assert_owner_lost(task: &Task, error: &str) {
    assert_eq!(
        (task.state(), task.error.as_str()),
        (TaskState::Failed, error),
        "{task:?}"
    );
}

#[tokio::test]
async fn killing_the_owner_settles_its_tasks_on_a_survivor_within_about_a_lease() {
    let mut cluster = Cluster::start(1, &["--lease-ttl", &flag(LEASE_TTL)]);
    let a = cluster.client(A).await;
    let plain = start_running(&a, long_sleep()).await;
    let asked = start_running(&a, stuck_sleep()).await;
    cluster.add_replica();
    let b = cluster.client(B).await;
    let response = b
        .soft_cancel(&asked.id, "wrap up", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(response.outcome(), CancelOutcome::Requested);

    cluster.replica(A).signal(Signal::SIGKILL);
    let killed = Instant::now();
    let plain = wait_finished(&b, &plain.id).await;
    let asked = wait_finished(&b, &asked.id).await;
    let took = killed.elapsed();

    assert_owner_lost(&plain, &lost(&cluster, A));
    assert_eq!(
        asked.state(),
        TaskState::Cancelled,
        "it was asked to stop: {asked:?}"
    );
    let cancel = asked.cancel.unwrap();
    assert_eq!(
        (cancel.mode(), cancel.reason.as_str(), cancel.escalated),
        (CancelMode::Soft, "wrap up", false)
    );
    assert!(took < SETTLE_BOUND, "settled {took:?} after the kill");
    let active = b.list(ListActiveRequest::default()).await.unwrap();
    assert!(active.tasks.is_empty(), "still active: {:?}", active.tasks);
}

#[tokio::test]
async fn a_replica_restarted_under_its_id_settles_what_its_previous_process_left_running() {
    // A long lease: nobody but A itself settles its tasks within the test.
    let mut cluster = Cluster::start(1, &["--lease-ttl", &flag(LONG_LEASE_TTL)]);
    let a = cluster.client(A).await;
    let tasks = [
        start_running(&a, long_sleep()).await,
        start_running(&a, stuck_sleep()).await,
    ];
    cluster.add_replica();
    let b = cluster.client(B).await;

    cluster.replica(A).signal(Signal::SIGKILL);
    cluster
        .replica_mut(A)
        .wait_exit(PATIENCE)
        .await
        .expect("reinsd killed");
    for task in &tasks {
        let now = b.check(&task.id).await.unwrap();
        assert_eq!(now.state(), TaskState::Running, "A's lease still runs");
    }

    cluster.restart_replica(A);
    let restarted = Instant::now();
    for task in &tasks {
        let done = wait_finished(&b, &task.id).await;
        assert_owner_lost(&done, &lost(&cluster, A));
    }
    // It settles them as it starts, before it serves: no slower than survivors settle a
    // replica lost under the short lease.
    let took = restarted.elapsed();
    assert!(took < SETTLE_BOUND, "settled {took:?} after the restart");
}

#[tokio::test]
async fn a_partitioned_owner_comes_back_fenced_and_stops_its_program() {
    let mut cluster = Cluster::start(1, &["--lease-ttl", &flag(LEASE_TTL), "--allow-exec", "sh"]);
    let a = cluster.client(A).await;
    let heartbeat = Heartbeat::new();
    let task = start_running(&a, heartbeat.task()).await;
    heartbeat.wait_beating().await;
    cluster.add_replica();
    let b = cluster.client(B).await;

    // A freezes: it can neither renew its lease nor write, but its program runs on.
    cluster.replica(A).signal(Signal::SIGSTOP);
    let settled = wait_finished(&b, &task.id).await;
    assert_owner_lost(&settled, &lost(&cluster, A));
    heartbeat.wait_beating().await;

    // A thaws with a backlog of progress lines to report and a task it no longer owns.
    cluster.replica(A).signal(Signal::SIGCONT);
    heartbeat.wait_dead().await;
    assert_eq!(
        cluster.check_everywhere(&task.id).await,
        settled,
        "A's late writes were refused"
    );
}

#[tokio::test]
async fn a_frozen_owner_aborts_its_workers_run_once_the_task_went_back_to_the_queue() {
    let mut cluster = Cluster::start(1, &["--lease-ttl", &flag(LEASE_TTL)]);
    let a = cluster.client(A).await;
    let mut worker =
        FakeWorker::connect(&cluster.replica(A).url(), "thawed", &["research"], 1).await;
    let task = a
        .start(StartTask::new("research").max_attempts(2))
        .await
        .expect("start");
    let first = worker.expect_assign().await;
    cluster.add_replica();
    let b = cluster.client(B).await;

    // A freezes past its lease: B hands the task back to the queue for its next attempt
    // (no worker is connected to B, so it stays there). A's worker still runs attempt 1.
    cluster.replica(A).signal(Signal::SIGSTOP);
    let requeued = eventually("the task handed back to the queue", || async {
        let now = b.check(&task.id).await.ok()?;
        (now.state() == TaskState::Pending).then_some(now)
    })
    .await;
    assert_eq!(
        (requeued.attempt, requeued.owner.as_str()),
        (first.attempt, "")
    );

    // A thaws, finds the task no longer its own, and stops the worker's code: the task has
    // not moved with its worker (that would be the same attempt, owned elsewhere).
    cluster.replica(A).signal(Signal::SIGCONT);
    let abort = worker.expect_abort().await;
    assert_eq!(abort.task_id, task.id);
}

/// Awaits a call that must not hang; returns it with how long it took.
async fn within<T>(call: impl Future<Output = Result<T, Status>>) -> (Result<T, Status>, Duration) {
    let begun = Instant::now();
    let result = tokio::time::timeout(FAIL_FAST_BOUND, call)
        .await
        .unwrap_or_else(|_| panic!("the call hung for {FAIL_FAST_BOUND:?}"));
    (result, begun.elapsed())
}

fn assert_store_unavailable<T: std::fmt::Debug>((result, took): (Result<T, Status>, Duration)) {
    let status = result.expect_err("the call fails while Redis is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "STORE_UNAVAILABLE");
    eprintln!(
        "failed after {took:?} while Redis was down: {}",
        status.message()
    );
}

type Events = Pin<Box<dyn Stream<Item = Result<TaskEvent, Status>> + Send>>;

async fn watch_after(client: &Client, id: &str, after_version: u64) -> Result<Events, Status> {
    Ok(Box::pin(
        client.watch(id, resume_after(after_version)).await?,
    ))
}

/// Reads the watch `events` of task `id` up to its terminal version, as a client would: a
/// stream that breaks with UNAVAILABLE is resumed after the last version seen. A stream
/// that goes silent fails the test. Returns every version seen.
async fn follow_to_the_end(client: Client, id: String, mut events: Events) -> Vec<Task> {
    let mut seen: Vec<Task> = Vec::new();
    let following = async {
        loop {
            match events.next().await {
                Some(Ok(event)) => {
                    let task = event.task.expect("event task");
                    let done = task.state().is_terminal();
                    seen.push(task);
                    if done {
                        return;
                    }
                }
                Some(Err(status)) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    let after = seen.last().map_or(0, |task| task.version);
                    events = eventually("the watch to resume", || async {
                        watch_after(&client, &id, after).await.ok()
                    })
                    .await;
                }
                None => panic!("the watch of task {id} ended before its terminal version"),
            }
        }
    };
    if tokio::time::timeout(PATIENCE, following).await.is_err() {
        let versions: Vec<u64> = seen.iter().map(|task| task.version).collect();
        panic!("the watch of task {id} went silent after versions {versions:?}");
    }
    seen
}

/// Polls task `id` until it is terminal (a watch is not used: it may need a retry right
/// after an outage).
async fn poll_finished(client: &Client, id: &str) -> Task {
    eventually("the task to finish", || async {
        client
            .check(id)
            .await
            .ok()
            .filter(|task| task.state().is_terminal())
    })
    .await
}

#[tokio::test]
async fn a_redis_outage_fails_calls_fast_and_loses_nothing() {
    // A lease longer than the outage: the replicas stay members throughout.
    let mut cluster = Cluster::on(
        RedisServer::start_with_aof(),
        2,
        &["--lease-ttl", &flag(OUTAGE_LEASE_TTL)],
    );
    let clients = [cluster.client(A).await, cluster.client(B).await];
    let finished = finished_task(&clients[A]).await;
    let across = start_running(
        &clients[A],
        StartTask::new("sleep").params(sleep_params(20, 100)),
    )
    .await;
    let to_cancel = start_running(&clients[A], long_sleep()).await;
    // A watch on the other replica stays open through the outage.
    let watcher = &clients[cluster.other_than(cluster.owner_of(&across))];
    let events = watch_after(watcher, &across.id, 0).await.unwrap();
    let watching = tokio::spawn(follow_to_the_end(
        watcher.clone(),
        across.id.clone(),
        events,
    ));

    cluster.redis().stop();
    let (start_a, check_a, start_b, check_b) = tokio::join!(
        within(clients[A].start(long_sleep())),
        within(clients[A].check(&finished.id)),
        within(clients[B].start(long_sleep())),
        within(clients[B].check(&finished.id)),
    );
    assert_store_unavailable(start_a);
    assert_store_unavailable(check_a);
    assert_store_unavailable(start_b);
    assert_store_unavailable(check_b);
    // The outage lasts a while longer (longer than a client's reconnect budget): the
    // replicas must ride it out.
    tokio::time::sleep(SUSTAINED_OUTAGE).await;
    for i in [A, B] {
        assert!(
            process_alive(cluster.replica(i).pid().as_raw()),
            "replica {} survives the outage",
            cluster.id(i)
        );
    }

    cluster.redis().restart();
    let back = SystemTime::now();
    for client in &clients {
        let again = eventually("CheckTask to work again", || async {
            client.check(&finished.id).await.ok()
        })
        .await;
        assert_eq!(again, finished, "what finished before the outage is kept");
    }
    // Retried under one request id: a start that failed half-way is not doubled.
    let fresh = eventually("StartTask to work again", || async {
        let task = StartTask::new("sleep")
            .params(sleep_params(1, 0))
            .request_id("after the outage");
        clients[B].start(task).await.ok()
    })
    .await;
    assert_eq!(
        poll_finished(&clients[B], &fresh.id).await.state(),
        TaskState::Completed
    );

    let done = poll_finished(&clients[B], &across.id).await;
    assert_eq!(done.state(), TaskState::Completed, "{done:?}");
    assert!(
        system_time(done.finished_at.as_ref()) >= back,
        "it ran across the outage"
    );
    assert_eq!(done.partial_results.len(), 20, "no checkpoint lost");
    assert_eq!(json_of(done.result.as_ref())["steps_completed"], 20);

    let other = &clients[cluster.other_than(cluster.owner_of(&to_cancel))];
    let response = other
        .soft_cancel(
            &to_cancel.id,
            "after the outage",
            Some(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(response.outcome(), CancelOutcome::Requested);
    let cancelled = poll_finished(other, &to_cancel.id).await;
    assert_eq!(cancelled.state(), TaskState::Cancelled, "{cancelled:?}");
    assert!(
        !cancelled.cancel.unwrap().escalated,
        "the owner stopped it itself"
    );

    // The watch opened before the outage carried on to the end, missing nothing.
    let watched = watching.await.unwrap();
    let versions: Vec<u64> = watched.iter().map(|task| task.version).collect();
    assert!(
        versions.windows(2).all(|w| w[1] == w[0] + 1),
        "the watch saw every version: {versions:?}"
    );
    assert_eq!(watched.last(), Some(&done));
}

#[tokio::test]
async fn a_rolling_restart_stops_what_was_asked_to_stop_and_keeps_finished_results() {
    let mut cluster = Cluster::start(1, &["--shutdown-grace", &flag(SHUTDOWN_GRACE)]);
    let a = cluster.client(A).await;
    let finished_on_a = finished_task(&a).await;
    let asked = start_running(&a, stuck_sleep()).await;
    cluster.add_replica();
    let b = cluster.client(B).await;
    let finished_via_b = finished_task(&b).await;
    let response = b
        .soft_cancel(&asked.id, "rolling restart", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(response.outcome(), CancelOutcome::Requested);

    cluster.replica(A).signal(Signal::SIGTERM);
    let status = cluster
        .replica_mut(A)
        .wait_exit(EXIT_BOUND)
        .await
        .expect("replica a exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    let asked = wait_finished(&b, &asked.id).await;
    assert_eq!(asked.state(), TaskState::Cancelled, "{asked:?}");
    assert_eq!(asked.cancel.as_ref().unwrap().reason, "rolling restart");

    cluster.restart_replica(A);
    for task in [&finished_on_a, &finished_via_b, &asked] {
        assert_eq!(&cluster.check_everywhere(&task.id).await, task);
    }
    finished_task(&cluster.client(A).await).await;
}
