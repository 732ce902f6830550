//! Several replicas on one Redis behave as one service: every replica sees, cancels,
//! watches, answers and lists every task, wherever it runs; capacity is per replica and the
//! queue is shared; cancel-vs-complete races end the same everywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reins_client::proto::{
    CancelMode, CancelOutcome, ListActiveRequest, Task, TaskState, TaskView,
};
use reins_client::{Client, StartTask, WatchOptions};
use reins_e2e::{
    Cluster, Heartbeat, eventually, json_of, long_sleep, reason, resume_after, sleep_params,
    started, stuck_sleep, system_time, wait_finished, wait_for, wait_state,
};
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

/// A sleep task that makes no change for a minute: its record stays put while it runs.
fn idle() -> StartTask {
    StartTask::new("sleep").params(sleep_params(1, 60_000))
}

/// A task started through replica `via`, with a client of the replica running it and one
/// of another replica. Any replica with room may take a freshly queued task, so where it
/// runs is read from the record; the tests act through the replica that does not run it.
struct Placed {
    task: Task,
    owner: Client,
    other: Client,
}

async fn start_via(cluster: &Cluster, via: usize, task: StartTask) -> Placed {
    let client = cluster.client(via).await;
    let task = started(&client, client.start(task).await.expect("start the task")).await;
    let owner = cluster.owner_of(&task);
    Placed {
        owner: cluster.client(owner).await,
        other: cluster.client(cluster.other_than(owner)).await,
        task,
    }
}

/// Every version of task `id` after `after_version`, replayed and then live, to the end.
async fn versions_after(client: &Client, id: &str, after_version: u64) -> Vec<Task> {
    let events = client
        .watch(id, resume_after(after_version))
        .await
        .expect("resume the watch");
    let collecting = events.map(|event| event.expect("watch event").task.expect("event task"));
    tokio::time::timeout(reins_e2e::PATIENCE, collecting.collect())
        .await
        .unwrap_or_else(|_| panic!("the watch of task {id} did not end"))
}

/// Asserts that `tasks` are consecutive versions ending with the one terminal version.
fn assert_contiguous_to_the_end(tasks: &[Task]) {
    let versions: Vec<u64> = tasks.iter().map(|task| task.version).collect();
    assert!(
        versions.windows(2).all(|w| w[1] == w[0] + 1),
        "in version order, no gaps: {versions:?}"
    );
    let terminal: Vec<u64> = tasks
        .iter()
        .filter(|task| task.state().is_terminal())
        .map(|task| task.version)
        .collect();
    assert_eq!(
        terminal,
        versions.last().copied().into_iter().collect::<Vec<_>>(),
        "exactly one terminal version, the last: {versions:?}"
    );
}

#[tokio::test]
async fn a_task_started_on_one_replica_is_seen_identically_from_every_replica() {
    let cluster = Cluster::start(3, &[]);
    let started = cluster.client(A).await.start(idle()).await.unwrap();
    assert_eq!(started.state(), TaskState::Running);
    let seen = cluster.check_everywhere(&started.id).await;
    assert_eq!(seen, started, "the record as StartTask returned it");
    let owner = cluster.owner_of(&seen);
    assert_eq!(
        seen.owner,
        cluster.id(owner),
        "owned by a replica of the cluster"
    );

    for i in [B, C] {
        let listed = cluster
            .client(i)
            .await
            .list(ListActiveRequest {
                view: TaskView::Full as i32,
                ..ListActiveRequest::default()
            })
            .await
            .unwrap();
        assert_eq!(
            listed.tasks,
            std::slice::from_ref(&seen),
            "ListActive on {}",
            cluster.id(i)
        );
    }
}

#[tokio::test]
async fn a_task_started_on_a_replica_with_room_runs_on_that_replica() {
    // Every replica is idle; each task started on A must run on A ("starts it at once if
    // this replica has room"), not on whichever peer hears of it first.
    let cluster = Cluster::start(3, &[]);
    let a = cluster.client(A).await;
    let mut owners = BTreeMap::<String, usize>::new();
    for _ in 0..20 {
        let task = started(&a, a.start(idle()).await.unwrap()).await;
        *owners.entry(task.owner).or_default() += 1;
    }
    assert_eq!(
        owners,
        BTreeMap::from([(cluster.id(A).to_owned(), 20)]),
        "owners of 20 tasks started on an idle replica a"
    );
}

#[tokio::test]
async fn soft_cancel_through_another_replica_stops_the_task_at_its_checkpoint() {
    let cluster = Cluster::start(2, &[]);
    let placed = start_via(&cluster, A, long_sleep()).await;
    let id = &placed.task.id;
    wait_for(&placed.owner, id, "a checkpoint", |task| {
        !task.partial_results.is_empty()
    })
    .await;

    let response = placed
        .other
        .soft_cancel(id, "from afar", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(response.outcome(), CancelOutcome::Requested);
    assert_eq!(response.task.unwrap().state(), TaskState::Running);

    let done = wait_finished(&placed.other, id).await;
    assert_eq!(done.state(), TaskState::Cancelled, "{done:?}");
    let cancel = done.cancel.clone().unwrap();
    assert_eq!(cancel.mode(), CancelMode::Soft);
    assert!(
        !cancel.escalated,
        "it stopped at its checkpoint: {cancel:?}"
    );
    assert_eq!(cancel.reason, "from afar");
    assert_eq!(
        json_of(done.result.as_ref())["steps_completed"],
        done.partial_results.len(),
        "the code itself reported where it stopped"
    );
    assert_eq!(cluster.check_everywhere(id).await, done);
}

#[tokio::test]
async fn hard_cancel_through_another_replica_ends_the_task_and_stops_its_program() {
    let cluster = Cluster::start(2, &["--allow-exec", "sh"]);
    let heartbeat = Heartbeat::new();
    let placed = start_via(&cluster, A, heartbeat.task()).await;
    heartbeat.wait_beating().await;

    let response = placed
        .other
        .hard_cancel(&placed.task.id, "now")
        .await
        .unwrap();
    assert_eq!(response.outcome(), CancelOutcome::Cancelled);
    let cancelled = response.task.unwrap();
    assert_eq!(cancelled.state(), TaskState::Cancelled);
    assert_eq!(cancelled.cancel.as_ref().unwrap().mode(), CancelMode::Hard);

    heartbeat.wait_dead().await;
    assert_eq!(
        cluster.check_everywhere(&placed.task.id).await,
        cancelled,
        "nothing changed the record after the cancel"
    );
}

#[tokio::test]
async fn a_soft_cancel_through_another_replica_that_the_task_ignores_is_escalated() {
    let cluster = Cluster::start(2, &[]);
    let placed = start_via(&cluster, A, stuck_sleep()).await;
    let grace = Duration::from_millis(300);
    let response = placed
        .other
        .soft_cancel(&placed.task.id, "stop please", Some(grace))
        .await
        .unwrap();
    assert_eq!(response.outcome(), CancelOutcome::Requested);

    let done = wait_finished(&placed.other, &placed.task.id).await;
    assert_eq!(done.state(), TaskState::Cancelled, "{done:?}");
    let cancel = done.cancel.clone().unwrap();
    assert!(cancel.escalated, "{cancel:?}");
    assert_eq!(cancel.mode(), CancelMode::Hard);
    assert_eq!(cancel.reason, "stop please");
    assert!(
        system_time(done.finished_at.as_ref()) >= system_time(cancel.grace_deadline.as_ref()),
        "not before the grace deadline: {done:?}"
    );
    assert_eq!(cluster.check_everywhere(&placed.task.id).await, done);
}

#[tokio::test]
async fn a_watch_on_another_replica_sees_every_version_and_resumes_there() {
    let cluster = Cluster::start(2, &[]);
    let placed = start_via(
        &cluster,
        A,
        StartTask::new("sleep").params(sleep_params(8, 100)),
    )
    .await;
    let id = &placed.task.id;

    // Watch from the other replica, hang up after three versions, resume from the last.
    let mut seen = Vec::new();
    let mut events = placed
        .other
        .watch(id, WatchOptions::default())
        .await
        .unwrap();
    while seen.len() < 3 {
        let event = events.next().await.expect("an event").expect("watch event");
        seen.push(event.task.unwrap());
    }
    drop(events);
    let resumed = versions_after(&placed.other, id, seen.last().unwrap().version).await;
    assert!(!resumed.is_empty());
    seen.extend(resumed);
    assert_contiguous_to_the_end(&seen);
    assert_eq!(seen.last().unwrap().state(), TaskState::Completed);

    // The owner's own history holds exactly the same versions.
    let from_owner = versions_after(&placed.owner, id, seen[0].version - 1).await;
    assert_eq!(from_owner, seen);
}

#[tokio::test]
async fn an_answer_given_on_another_replica_reaches_the_task_on_its_owner() {
    let cluster = Cluster::start(2, &[]);
    let asking =
        StartTask::new("sleep").params(json!({"steps": 2, "step_ms": 10, "ask": "which colour?"}));
    let placed = start_via(&cluster, A, asking).await;
    let id = &placed.task.id;

    let waiting = wait_state(&placed.other, id, TaskState::WaitingForAnswer).await;
    assert_eq!(waiting.question, "which colour?");
    let answered = placed.other.answer(id, "blue").await.unwrap();
    assert_eq!(answered.state(), TaskState::Running);

    let done = wait_finished(&placed.owner, id).await;
    assert_eq!(done.state(), TaskState::Completed, "{done:?}");
    assert_eq!(json_of(done.result.as_ref())["answer"], "blue");
    assert_eq!(done.answer, "blue");
    assert_eq!(cluster.check_everywhere(id).await, done);
}

#[tokio::test]
async fn list_active_is_cluster_wide_and_pages_stably_across_replicas() {
    let cluster = Cluster::start(3, &[]);
    let clients = [
        cluster.client(A).await,
        cluster.client(B).await,
        cluster.client(C).await,
    ];
    let mut started = Vec::new();
    for i in 0..7 {
        started.push(clients[i % 2].start(idle()).await.unwrap().id);
    }

    // Page by two, each page from the next replica; meanwhile a task already listed ends
    // and a new one starts (it sorts last).
    let mut listed = Vec::new();
    let mut token = String::new();
    let mut late = None;
    for page in 0.. {
        let request = ListActiveRequest {
            page_size: 2,
            page_token: token,
            ..ListActiveRequest::default()
        };
        let response = clients[page % 3].list(request).await.unwrap();
        listed.extend(response.tasks.iter().map(|task| task.id.clone()));
        if page == 0 {
            clients[C].hard_cancel(&listed[0], "done").await.unwrap();
            late = Some(clients[C].start(idle()).await.unwrap().id);
        }
        token = response.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let mut expected = started;
    expected.extend(late);
    expected.sort();
    assert_eq!(listed, expected, "every task once, in creation (id) order");
}

#[tokio::test]
async fn capacity_is_per_replica_and_the_queue_is_shared_oldest_first() {
    let cluster = Cluster::start(2, &["--max-concurrency", "1"]);
    let (a, b) = (cluster.client(A).await, cluster.client(B).await);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let task = a
            .start(StartTask::new("sleep").params(sleep_params(10, 50)))
            .await
            .unwrap();
        tasks.push(task.id);
    }
    let queued = a.start(long_sleep()).await.unwrap();
    assert_eq!(queued.state(), TaskState::Pending, "both replicas are busy");
    let response = b.hard_cancel(&queued.id, "not needed").await.unwrap();
    assert_eq!(response.outcome(), CancelOutcome::Cancelled);

    let mut done = Vec::new();
    for id in &tasks {
        let task = wait_finished(&b, id).await;
        assert_eq!(task.state(), TaskState::Completed, "{task:?}");
        done.push(task);
    }
    let owners: BTreeSet<&str> = done.iter().map(|task| task.owner.as_str()).collect();
    assert_eq!(owners, BTreeSet::from([cluster.id(A), cluster.id(B)]));
    for owner in owners {
        let mut runs: Vec<(SystemTime, SystemTime)> = done
            .iter()
            .filter(|task| task.owner == owner)
            .map(|task| {
                (
                    system_time(task.started_at.as_ref()),
                    system_time(task.finished_at.as_ref()),
                )
            })
            .collect();
        runs.sort();
        assert!(
            runs.windows(2).all(|w| w[1].0 >= w[0].1),
            "replica {owner} ran two tasks at once: {runs:?}"
        );
    }
    let starts: Vec<SystemTime> = done
        .iter()
        .map(|task| system_time(task.started_at.as_ref()))
        .collect();
    assert!(
        starts.windows(2).all(|w| w[0] < w[1]),
        "queued tasks start oldest first: {starts:?}"
    );

    let never = cluster.check_everywhere(&queued.id).await;
    assert_eq!(never.state(), TaskState::Cancelled);
    assert!(
        never.started_at.is_none() && never.owner.is_empty(),
        "{never:?}"
    );
    assert_eq!(never.attempt, 0, "it never started");
}

/// A small deterministic generator (xorshift64*): a failing run can be repeated with the
/// seed it prints.
struct Rng(u64);

impl Rng {
    fn from_env_or_clock() -> Rng {
        let seed = std::env::var("REINS_E2E_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("race seed {seed} (REINS_E2E_SEED={seed} repeats this run)");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % n
    }
}

/// One race: a short task started on A, cancelled from the replica not running it after
/// `delay_ms`.
struct Race {
    step_ms: u64,
    delay_ms: u64,
    hard: bool,
}

/// Runs a race and checks how it ended; returns "outcome → final state".
async fn run_race(cluster: &Cluster, clients: &[Client], race: Race) -> String {
    let sleep = StartTask::new("sleep").params(sleep_params(1, race.step_ms));
    let task = started(&clients[A], clients[A].start(sleep).await.unwrap()).await;
    let canceller = &clients[cluster.other_than(cluster.owner_of(&task))];
    tokio::time::sleep(Duration::from_millis(race.delay_ms)).await;
    let response = if race.hard {
        canceller.hard_cancel(&task.id, "race").await.unwrap()
    } else {
        canceller.soft_cancel(&task.id, "race", None).await.unwrap()
    };
    let outcome = response.outcome();

    let done = wait_finished(canceller, &task.id).await;
    match outcome {
        CancelOutcome::Cancelled => assert_eq!(done.state(), TaskState::Cancelled),
        CancelOutcome::AlreadyFinished => assert_eq!(done.state(), TaskState::Completed),
        // A soft cancel may be overtaken by completion: it is reported honestly.
        CancelOutcome::Requested => assert!(
            matches!(done.state(), TaskState::Cancelled | TaskState::Completed),
            "{done:?}"
        ),
        other => panic!("unexpected outcome {other:?} for {done:?}"),
    }
    if outcome != CancelOutcome::Requested {
        assert_eq!(
            response.task.as_ref(),
            Some(&done),
            "the cancel returned the final record"
        );
    }
    assert_eq!(cluster.check_everywhere(&task.id).await, done);
    let history = versions_after(canceller, &task.id, 1).await;
    assert_contiguous_to_the_end(&history);
    assert_eq!(history.last(), Some(&done));
    format!("{outcome:?} → {:?}", done.state())
}

#[tokio::test]
async fn cancel_and_completion_races_across_replicas_end_once_and_the_same_everywhere() {
    const RACES: usize = 120;
    const BATCH: usize = 20;
    let cluster = Arc::new(Cluster::start(2, &[]));
    let clients: Arc<[Client]> = Arc::new([cluster.client(A).await, cluster.client(B).await]);
    let mut rng = Rng::from_env_or_clock();
    let mut tally = BTreeMap::<String, usize>::new();
    for _ in 0..RACES / BATCH {
        let mut batch = Vec::new();
        for _ in 0..BATCH {
            // A StartTask answers after its replica's dispatch round, so under load the
            // task may have run for a while already; these ranges give a mix of cancels
            // landing before, during and after completion.
            let race = Race {
                step_ms: 50 + rng.below(250),
                delay_ms: rng.below(100),
                hard: rng.below(2) == 0,
            };
            let (cluster, clients) = (Arc::clone(&cluster), Arc::clone(&clients));
            batch.push(tokio::spawn(async move {
                run_race(&cluster, &clients, race).await
            }));
        }
        for race in batch {
            *tally.entry(race.await.unwrap()).or_default() += 1;
        }
    }
    eprintln!("race outcomes: {tally:?}");
}

#[tokio::test]
async fn hard_cancel_of_a_parent_cancels_its_child_running_on_another_replica() {
    // One task per replica: the child can only run on the replica the parent does not use.
    let cluster = Cluster::start(2, &["--max-concurrency", "1"]);
    let parent = start_via(&cluster, A, long_sleep()).await;
    let child = parent
        .other
        .start(long_sleep().parent(&parent.task.id))
        .await
        .unwrap();
    let child = started(&parent.other, child).await;
    assert_ne!(child.owner, parent.task.owner, "the child runs elsewhere");

    // From the child's replica, which does not run the parent.
    let response = parent
        .other
        .hard_cancel(&parent.task.id, "tear down")
        .await
        .unwrap();
    assert_eq!(response.outcome(), CancelOutcome::Cancelled);
    let child = cluster.check_everywhere(&child.id).await;
    assert_eq!(child.state(), TaskState::Cancelled, "when the call returns");
    let cancel = child.cancel.unwrap();
    assert_eq!(cancel.mode(), CancelMode::Hard);
    assert_eq!(
        cancel.reason,
        format!("ancestor {} cancelled: tear down", parent.task.id)
    );
    let parent = cluster.check_everywhere(&parent.task.id).await;
    assert_eq!(parent.state(), TaskState::Cancelled);
}

#[tokio::test]
async fn finished_tasks_expire_from_redis_after_the_retention_period() {
    let cluster = Cluster::start(2, &["--retention", "1s"]);
    let (a, b) = (cluster.client(A).await, cluster.client(B).await);
    let task = a
        .start(StartTask::new("sleep").params(sleep_params(0, 0)))
        .await
        .unwrap();
    let done = wait_finished(&b, &task.id).await;
    assert_eq!(done.state(), TaskState::Completed);
    assert_eq!(
        cluster.check_everywhere(&task.id).await,
        done,
        "still readable"
    );

    for client in [&a, &b] {
        let status = eventually("the finished task to expire", || async {
            client.check(&task.id).await.err()
        })
        .await;
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_eq!(reason(&status), "TASK_NOT_FOUND");
    }
}
