//! Workers: processes connected over `WorkerService.Connect` run the tasks of the kinds they
//! serve. Kinds, the handshake, capacity, reports, cancels, questions, lost workers and
//! bad worker input, driven through a [`FakeWorker`].

use std::time::Duration;

use reins_client::proto::worker_command::Command;
use reins_client::proto::worker_message::Message;
use reins_client::proto::{
    CancelMode, CancelOutcome, ListActiveRequest, Task, TaskComplete, TaskFail, TaskState,
};
use reins_client::{Client, StartTask};
use reins_e2e::worker::{Next, hello, message, moving_hello};
use reins_e2e::{
    Cluster, FakeWorker, REPLICA_ID, Reinsd, bad_fields, eventually, json_of, reason, system_time,
    wait_finished, wait_for, wait_state,
};
use serde_json::json;
use tonic::{Code, Status};

const A: usize = 0;
const B: usize = 1;

/// The worker kind of these tests.
const KIND: &str = "research";

/// Long enough for a message the server wrongly acted on to show; used only to assert
/// that something does not happen.
const WINDOW: Duration = Duration::from_millis(300);

fn research(topic: &str) -> StartTask {
    StartTask::new(KIND).params(json!({ "topic": topic }))
}

async fn research_worker(server: &Reinsd, name: &str, max_concurrency: u32) -> FakeWorker {
    FakeWorker::connect(&server.url(), name, &[KIND], max_concurrency).await
}

/// Starts a `research` task and waits until `worker` has been assigned it.
async fn assigned(client: &Client, worker: &mut FakeWorker, task: StartTask) -> Task {
    let task = client.start(task).await.expect("start a worker task");
    let assignment = worker.expect_assign().await;
    assert_eq!(
        assignment.id, task.id,
        "the assignment is the task just started"
    );
    task
}

/// Waits until the task's progress message is `text`.
async fn wait_progress(client: &Client, id: &str, text: &str) -> Task {
    wait_for(client, id, "the progress", |task| {
        task.progress.as_ref().is_some_and(|p| p.message == text)
    })
    .await
}

/// The tasks still active on the server.
async fn active(client: &Client) -> Vec<Task> {
    client
        .list(ListActiveRequest::default())
        .await
        .expect("list active tasks")
        .tasks
}

/// The status a worker stream that starts with `first` is refused with: on the call
/// itself, or as the end of its stream.
async fn refusal(url: &str, first: Vec<reins_client::proto::WorkerMessage>) -> Status {
    match FakeWorker::open(url, "refused", first).await {
        Err(status) => status,
        Ok(mut worker) => worker
            .closed()
            .await
            .expect("the stream ends with an error status"),
    }
}

// ---- moving workers ----

#[tokio::test]
async fn a_moving_hello_is_bounded_and_adopts_only_a_task_that_can_move() {
    let server = Reinsd::start();
    let url = server.url();
    let (one, two) = (
        "01900000-0000-7000-8000-000000000001",
        "01900000-0000-7000-8000-000000000002",
    );
    let status = refusal(
        &url,
        vec![moving_hello("m", &[KIND], 1, &[(one, 1), (two, 1)])],
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_fields(&status), ["hello.running"]);
    let status = refusal(
        &url,
        vec![moving_hello("m", &[KIND], 1, &[("not-an-id", 1)])],
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_fields(&status), ["hello.running.task_id"]);

    let mut owner = FakeWorker::connect(&url, "owner", &[KIND], 1).await;
    let client = server.client().await;
    let task = client.start(StartTask::new(KIND)).await.unwrap();
    let assigned = owner.expect_assign().await;
    // Another attempt, an unknown task, and even the right attempt by a worker of the same
    // name on the replica that owns it already (no move: a task changes worker only with
    // its replica): none moves.
    let claims = [
        (task.id.as_str(), assigned.attempt + 1),
        (one, 1),
        (task.id.as_str(), assigned.attempt),
    ];
    for claim in claims {
        let impostor =
            FakeWorker::connect_with(&url, "owner", moving_hello("owner", &[KIND], 1, &[claim]))
                .await;
        assert!(impostor.adopted().is_empty(), "{claim:?} was adopted");
    }
    let still = client.check(&task.id).await.unwrap();
    assert_eq!(
        (still.worker, still.attempt),
        (owner.label(), assigned.attempt)
    );
    owner.complete(&task.id, json!("mine"));
    assert_eq!(
        wait_finished(&client, &task.id).await.state(),
        TaskState::Completed
    );
}

// ---- kinds ----

#[tokio::test]
async fn an_unknown_kind_is_invalid_argument_kind_unknown() {
    let server = Reinsd::with_args(&["--worker-kind", "translate"]);
    let client = server.client().await;
    let status = client.start(research("unserved")).await.unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::InvalidArgument, "KIND_UNKNOWN")
    );
    assert!(active(&client).await.is_empty(), "no task was created");
}

#[tokio::test]
async fn a_declared_worker_kind_waits_pending_until_a_worker_connects_then_runs_on_it() {
    let server = Reinsd::with_args(&["--worker-kind", KIND]);
    let client = server.client().await;
    let task = client.start(research("queued")).await.unwrap();
    assert_eq!(task.state(), TaskState::Pending);
    assert!(task.owner.is_empty() && task.worker.is_empty());
    tokio::time::sleep(WINDOW).await;
    assert_eq!(
        client.check(&task.id).await.unwrap().state(),
        TaskState::Pending,
        "no worker serves it yet"
    );

    let mut worker = research_worker(&server, "research-worker", 1).await;
    let assignment = worker.expect_assign().await;
    assert_eq!(assignment.id, task.id);
    let running = wait_state(&client, &task.id, TaskState::Running).await;
    assert_eq!(
        running.owner, REPLICA_ID,
        "owned by the replica holding the worker"
    );
    assert_eq!(
        running.worker,
        format!("research-worker/{}", worker.worker_id())
    );
    assert_eq!(running.attempt, 1);
}

#[tokio::test]
async fn a_kind_served_by_a_connected_worker_is_valid_without_worker_kind() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut worker = research_worker(&server, "w", 1).await;
    let task = client.start(research("served")).await.unwrap();
    assert_eq!(task.state(), TaskState::Running, "the worker has room");
    assert_eq!(task.worker, worker.label());
    assert_eq!(worker.expect_assign().await.id, task.id);

    let status = client.start(StartTask::new("translate")).await.unwrap_err();
    assert_eq!(reason(&status), "KIND_UNKNOWN", "only the kinds it serves");
}

#[tokio::test]
async fn on_a_cluster_a_task_started_on_one_replica_runs_on_a_worker_connected_to_another() {
    let cluster = Cluster::start(2, &[]);
    let mut worker = FakeWorker::connect(&cluster.replica(A).url(), "on-a", &[KIND], 1).await;
    let b = cluster.client(B).await;
    let task = b.start(research("remote")).await.unwrap();
    assert_eq!(worker.expect_assign().await.id, task.id);
    let running = wait_state(&b, &task.id, TaskState::Running).await;
    assert_eq!(
        running.owner,
        cluster.id(A),
        "owned by the worker's replica"
    );
    assert_eq!(running.worker, worker.label());

    worker.complete(&task.id, json!({"found": 3}));
    let done = wait_finished(&b, &task.id).await;
    assert_eq!(done.state(), TaskState::Completed);
    assert_eq!(json_of(done.result.as_ref()), json!({"found": 3}));
}

#[tokio::test]
async fn tasks_waiting_for_a_worker_do_not_hold_up_other_kinds() {
    let server = Reinsd::with_args(&["--worker-kind", KIND]);
    let client = server.client().await;
    for i in 0..20 {
        let queued = client
            .start(research(&format!("queued {i}")))
            .await
            .unwrap();
        assert_eq!(queued.state(), TaskState::Pending);
    }
    let sleep = client
        .start(StartTask::new("sleep").params(reins_e2e::sleep_params(1, 60_000)))
        .await
        .unwrap();
    assert_eq!(
        sleep.state(),
        TaskState::Running,
        "a built-in task starts although older tasks wait for a worker"
    );
    let mut translator = FakeWorker::connect(&server.url(), "translator", &["translate"], 1).await;
    let translate = client.start(StartTask::new("translate")).await.unwrap();
    assert_eq!(
        translate.state(),
        TaskState::Running,
        "a task its worker has room for starts at once"
    );
    assert_eq!(translator.expect_assign().await.id, translate.id);
}

// ---- learned kinds ----

/// The `--worker-kind-ttl` of the tests of learned kinds: short, but long against the
/// few milliseconds a call takes.
const KIND_TTL: Duration = Duration::from_secs(2);

/// Whether StartTask accepts `kind` on `client`. Always the same `request_id`: a probe
/// that is accepted returns the task of the first accepted probe instead of adding one.
async fn accepts(client: &Client, kind: &str) -> bool {
    let probe = StartTask::new(kind).request_id(format!("probe-{:.40}", kind));
    match client.start(probe).await {
        Ok(_) => true,
        Err(status) if reason(&status) == "KIND_UNKNOWN" => false,
        Err(status) => panic!("StartTask {kind}: {status:?}"),
    }
}

#[tokio::test]
async fn a_kind_learned_from_a_hello_expires_a_ttl_after_its_last_worker_left() {
    let ttl = format!("{}s", KIND_TTL.as_secs());
    let server = Reinsd::with_args(&["--worker-kind-ttl", &ttl]);
    let client = server.client().await;
    assert!(!accepts(&client, KIND).await, "not learned yet");

    let connecting = std::time::Instant::now();
    let mut worker = research_worker(&server, "w", 1).await;
    let running = assigned(&client, &mut worker, research("running")).await;
    let queued = client.start(research("queued")).await.unwrap();
    assert_eq!(queued.state(), TaskState::Pending, "the worker is full");
    worker.disconnect();
    // Its task failing shows that the server saw the worker leave.
    assert_eq!(
        wait_finished(&client, &running.id).await.state(),
        TaskState::Failed
    );
    assert!(
        accepts(&client, KIND).await,
        "still valid after the worker left: learned"
    );

    eventually("the learned kind to expire", || async {
        (!accepts(&client, KIND).await).then_some(())
    })
    .await;
    assert!(
        connecting.elapsed() >= KIND_TTL - Duration::from_millis(10),
        "expired {:?} after the hello, before the TTL",
        connecting.elapsed()
    );
    assert_eq!(
        client.check(&queued.id).await.unwrap().state(),
        TaskState::Pending,
        "a queued task of an expired kind stays queued"
    );

    let mut again = research_worker(&server, "again", 1).await;
    assert_eq!(
        again.expect_assign().await.id,
        queued.id,
        "and starts when a worker for its kind connects again"
    );
    assert!(accepts(&client, KIND).await, "learned again");
}

#[tokio::test]
async fn on_a_cluster_a_learned_kind_stays_valid_while_served_and_expires_after_its_worker_left() {
    let ttl = format!("{}s", KIND_TTL.as_secs());
    let cluster = Cluster::start(2, &["--worker-kind-ttl", &ttl]);
    let b = cluster.client(B).await;
    let worker = FakeWorker::connect(&cluster.replica(A).url(), "on-a", &[KIND], 1).await;

    // Asked on B, which has no worker: only A's refreshes keep the kind valid.
    let serving = std::time::Instant::now();
    while serving.elapsed() < KIND_TTL * 5 / 2 {
        assert!(
            accepts(&b, KIND).await,
            "still served on A, {:?} after the hello",
            serving.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let leaving = std::time::Instant::now();
    worker.disconnect();
    eventually("the learned kind to expire on B", || async {
        (!accepts(&b, KIND).await).then_some(())
    })
    .await;
    assert!(
        leaving.elapsed() >= KIND_TTL / 3,
        "expired {:?} after the worker left: at most a third of the TTL may have passed since A's last refresh",
        leaving.elapsed()
    );
    assert!(
        !accepts(&cluster.client(A).await, KIND).await,
        "expired on A too"
    );
}

#[tokio::test]
async fn without_learning_only_declared_kinds_are_valid_and_a_hello_naming_another_is_refused() {
    let server = Reinsd::with_args(&["--learn-worker-kinds=false", "--worker-kind", KIND]);
    let client = server.client().await;
    let queued = client.start(research("declared")).await.unwrap();
    assert_eq!(queued.state(), TaskState::Pending);

    for kinds in [&["translate"][..], &[KIND, "translate"][..]] {
        let status = refusal(&server.url(), vec![hello("undeclared", kinds, 1)]).await;
        assert_eq!(
            (status.code(), reason(&status).as_str()),
            (Code::PermissionDenied, "KIND_NOT_DECLARED"),
            "kinds {kinds:?}: {status:?}"
        );
        assert!(status.message().contains("translate"), "{status:?}");
    }
    let status = client.start(StartTask::new("translate")).await.unwrap_err();
    assert_eq!(
        reason(&status),
        "KIND_UNKNOWN",
        "a refused hello teaches nothing"
    );

    let mut worker = research_worker(&server, "declared", 1).await;
    assert_eq!(
        worker.expect_assign().await.id,
        queued.id,
        "a declared kind is served"
    );
    worker.complete(&queued.id, json!({"done": true}));
    assert_eq!(
        wait_finished(&client, &queued.id).await.state(),
        TaskState::Completed
    );
}

#[tokio::test]
async fn a_replica_that_does_not_learn_ignores_kinds_other_replicas_learned() {
    let redis = reins_e2e::RedisServer::start();
    let url = redis.url();
    let learning = Reinsd::with_args(&["--redis-url", &url, "--replica-id", "a"]);
    let declared_only = Reinsd::with_args(&[
        "--redis-url",
        &url,
        "--replica-id",
        "b",
        "--learn-worker-kinds=false",
    ]);
    let _worker = FakeWorker::connect(&learning.url(), "on-a", &[KIND], 1).await;
    assert!(
        accepts(&learning.client().await, KIND).await,
        "learned on a"
    );
    assert!(
        !accepts(&declared_only.client().await, KIND).await,
        "b accepts declared kinds only"
    );
}

#[tokio::test]
async fn a_hello_with_too_many_or_badly_named_kinds_is_invalid_argument() {
    let server = Reinsd::start();
    let client = server.client().await;
    let many: Vec<String> = (0..65).map(|i| format!("many-{i}")).collect();
    let long = "x".repeat(129);
    let huge = "y".repeat(20_000);
    let cases: [(&str, Vec<&str>); 5] = [
        ("65 kinds", many.iter().map(String::as_str).collect()),
        ("a 129-character kind", vec![KIND, &long]),
        ("a 20 kB kind", vec![&huge]),
        ("a space", vec!["has space"]),
        ("an empty kind", vec![KIND, ""]),
    ];
    for (what, kinds) in &cases {
        let status = refusal(&server.url(), vec![hello("bad", kinds, 1)]).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert_eq!(bad_fields(&status), ["hello.kinds"], "{what}");
        assert!(status.message().len() < 500, "{what}: {}", status.message());
    }
    for kind in ["many-0", KIND] {
        let status = client.start(StartTask::new(kind)).await.unwrap_err();
        assert_eq!(
            reason(&status),
            "KIND_UNKNOWN",
            "{kind}: nothing was learned"
        );
    }

    let most: Vec<String> = (0..64)
        .map(|i| format!("{i:02}{}", "z".repeat(126)))
        .collect();
    let most: Vec<&str> = most.iter().map(String::as_str).collect();
    let _worker = FakeWorker::connect(&server.url(), "at-the-limits", &most, 1).await;
    assert!(
        accepts(&client, most[63]).await,
        "64 kinds of up to 128 characters"
    );
}

// ---- handshake ----

#[tokio::test]
async fn the_first_command_is_welcome_and_an_assignment_carries_the_task() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut worker = FakeWorker::open(&server.url(), "w", vec![hello("w", &[KIND], 1)])
        .await
        .unwrap();
    let Command::Welcome(welcome) = worker.next().await else {
        panic!("the first command is not `welcome`");
    };
    assert!(!welcome.worker_id.is_empty(), "a worker id");
    let heartbeat = Duration::try_from(welcome.heartbeat_interval.expect("a heartbeat interval"))
        .expect("a non-negative interval");
    assert!(heartbeat > Duration::ZERO);
    worker.welcome = Some(welcome);

    let other = FakeWorker::connect(&server.url(), "w", &["translate"], 1).await;
    assert_ne!(
        other.worker_id(),
        worker.worker_id(),
        "one id per connection"
    );
    drop(other);

    let started = client
        .start(
            research("rivers")
                .description("find sources")
                .label("team", "geo"),
        )
        .await
        .unwrap();
    let task = worker.expect_assign().await;
    assert_eq!(task.id, started.id);
    assert_eq!(task.kind, KIND);
    let params = task.params.as_ref().expect("params");
    assert_eq!(
        reins_client::json::struct_to_json(params).unwrap(),
        json!({"topic": "rivers"}).as_object().unwrap().clone()
    );
    assert_eq!(task.description, "find sources");
    assert_eq!(task.labels.get("team").map(String::as_str), Some("geo"));
    assert_eq!(task.state(), TaskState::Running);
    assert_eq!(task.attempt, 1);
    assert_eq!(task.worker, worker.label());
}

// ---- capacity ----

#[tokio::test]
async fn a_worker_never_runs_more_than_its_max_concurrency_and_gets_queued_tasks_oldest_first() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut worker = research_worker(&server, "w", 2).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(client.start(research(&format!("t{i}"))).await.unwrap().id);
    }
    let mut running = vec![
        worker.expect_assign().await.id,
        worker.expect_assign().await.id,
    ];
    assert_eq!(running, ids[..2]);
    worker.assert_quiet(WINDOW).await;
    for id in &ids[2..] {
        assert_eq!(
            client.check(id).await.unwrap().state(),
            TaskState::Pending,
            "queued while the worker is full"
        );
    }

    for next in &ids[2..] {
        let done = running.remove(0);
        worker.complete(&done, json!({"done": done}));
        let assignment = worker.expect_assign().await;
        assert_eq!(&assignment.id, next, "the oldest queued task comes first");
        running.push(assignment.id);
        worker.assert_quiet(Duration::from_millis(150)).await;
    }
    for id in &ids[..3] {
        assert_eq!(
            client.check(id).await.unwrap().state(),
            TaskState::Completed
        );
    }
}

// ---- reports ----

#[tokio::test]
async fn progress_and_checkpoints_update_the_task_and_complete_completes_it_with_the_result() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut worker = research_worker(&server, "w", 1).await;
    let task = assigned(&client, &mut worker, research("tides")).await;

    worker.progress(&task.id, 0.25, "reading sources");
    let reading = wait_progress(&client, &task.id, "reading sources").await;
    assert_eq!(reading.progress.unwrap().fraction, 0.25);
    assert!(reading.partial_results.is_empty(), "no checkpoint yet");

    worker.checkpoint(&task.id, 0.5, json!({"page": 1}));
    worker.checkpoint(&task.id, 0.75, json!({"page": 2}));
    let checkpointed = wait_for(&client, &task.id, "two checkpoints", |task| {
        task.partial_results.len() >= 2
    })
    .await;
    let partials: Vec<_> = checkpointed
        .partial_results
        .iter()
        .map(|value| json_of(Some(value)))
        .collect();
    assert_eq!(partials, [json!({"page": 1}), json!({"page": 2})]);
    assert_eq!(checkpointed.progress.unwrap().fraction, 0.75);

    worker.complete(&task.id, json!({"summary": "tides are lunar"}));
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Completed);
    assert_eq!(
        json_of(done.result.as_ref()),
        json!({"summary": "tides are lunar"})
    );
    assert_eq!(done.partial_results.len(), 2, "checkpoints are kept");
    assert!(done.error.is_empty());
}

#[tokio::test]
async fn fail_from_the_worker_fails_the_task_with_its_error() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut worker = research_worker(&server, "w", 1).await;
    let task = assigned(&client, &mut worker, research("atlantis")).await;
    worker.fail(&task.id, "no sources found");
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Failed);
    assert_eq!(done.error, "no sources found");
}

// ---- soft cancel ----

#[tokio::test]
async fn a_soft_cancel_reaches_the_worker_and_cancel_ack_cancels_keeping_result_and_checkpoints() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut worker = research_worker(&server, "w", 1).await;
    let task = assigned(&client, &mut worker, research("volcanoes")).await;
    worker.checkpoint(&task.id, 0.3, json!({"page": 1}));
    wait_for(&client, &task.id, "a checkpoint", |task| {
        !task.partial_results.is_empty()
    })
    .await;

    let response = client
        .soft_cancel(&task.id, "enough for now", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(response.outcome(), CancelOutcome::Requested);
    let recorded = response.task.unwrap().cancel.unwrap();
    let cancel = worker.expect_cancel().await;
    assert_eq!(cancel.task_id, task.id);
    assert_eq!(cancel.reason, "enough for now");
    assert_eq!(
        cancel.grace_deadline, recorded.grace_deadline,
        "the recorded grace deadline"
    );

    worker.cancel_ack(&task.id, json!({"pages": 1}));
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Cancelled);
    assert_eq!(json_of(done.result.as_ref()), json!({"pages": 1}));
    assert_eq!(
        done.partial_results
            .iter()
            .map(|value| json_of(Some(value)))
            .collect::<Vec<_>>(),
        [json!({"page": 1})]
    );
    let cancel = done.cancel.unwrap();
    assert_eq!(cancel.mode(), CancelMode::Soft);
    assert!(!cancel.escalated);
}

#[tokio::test]
async fn a_worker_that_completes_after_a_soft_cancel_wins_the_race() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut worker = research_worker(&server, "w", 1).await;
    let task = assigned(&client, &mut worker, research("glaciers")).await;
    client
        .soft_cancel(&task.id, "hurry", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    worker.expect_cancel().await;
    worker.complete(&task.id, json!({"summary": "finished anyway"}));
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Completed);
    assert_eq!(
        json_of(done.result.as_ref()),
        json!({"summary": "finished anyway"})
    );
    assert_eq!(
        done.cancel.unwrap().reason,
        "hurry",
        "the request is recorded"
    );
}

#[tokio::test]
async fn a_worker_that_ignores_a_soft_cancel_is_aborted_after_the_grace_and_the_task_escalated() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut worker = research_worker(&server, "w", 1).await;
    let task = assigned(&client, &mut worker, research("deserts")).await;
    client
        .soft_cancel(&task.id, "stop please", Some(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(worker.expect_cancel().await.task_id, task.id);
    let abort = worker.expect_abort().await;
    assert_eq!(abort.task_id, task.id);
    assert_eq!(abort.reason, "stop please");

    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Cancelled);
    let cancel = done.cancel.unwrap();
    assert!(cancel.escalated);
    assert_eq!(cancel.mode(), CancelMode::Hard);
    assert!(
        system_time(done.finished_at.as_ref()) >= system_time(cancel.grace_deadline.as_ref()),
        "not before the grace deadline"
    );
}

// ---- hard cancel ----

#[tokio::test]
async fn hard_cancel_aborts_the_worker_ignores_its_late_complete_and_frees_its_slot() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut worker = research_worker(&server, "w", 1).await;
    let first = assigned(&client, &mut worker, research("first")).await;
    let second = client.start(research("second")).await.unwrap();
    assert_eq!(second.state(), TaskState::Pending, "the worker is full");

    let response = client
        .hard_cancel(&first.id, "changed plans")
        .await
        .unwrap();
    assert_eq!(response.outcome(), CancelOutcome::Cancelled);
    let cancelled = response.task.unwrap();
    assert_eq!(
        cancelled.state(),
        TaskState::Cancelled,
        "when the call returns"
    );

    assert_eq!(worker.expect_abort().await.task_id, first.id);
    assert_eq!(
        worker.expect_assign().await.id,
        second.id,
        "the freed slot takes the queued task"
    );

    worker.complete(&first.id, json!({"too": "late"}));
    // Messages of one stream are handled in order: once this progress shows, the late
    // `complete` has been handled too.
    worker.progress(&second.id, 0.1, "after the late complete");
    wait_progress(&client, &second.id, "after the late complete").await;
    tokio::time::sleep(WINDOW).await;
    let later = client.check(&first.id).await.unwrap();
    assert_eq!(later.version, cancelled.version, "version stays put");
    assert_eq!(later.state(), TaskState::Cancelled);
    assert!(later.result.is_none());
}

#[tokio::test]
async fn the_abort_of_a_hard_cancel_carries_its_reason() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut worker = research_worker(&server, "w", 1).await;
    let task = assigned(&client, &mut worker, research("dunes")).await;
    client.hard_cancel(&task.id, "changed plans").await.unwrap();
    let abort = worker.expect_abort().await;
    assert_eq!(
        (abort.task_id.as_str(), abort.reason.as_str()),
        (task.id.as_str(), "changed plans")
    );
}

// ---- questions ----

#[tokio::test]
async fn a_question_from_the_worker_is_answered_on_another_replica_and_the_answer_reaches_it() {
    let cluster = Cluster::start(2, &[]);
    let mut worker = FakeWorker::connect(&cluster.replica(A).url(), "w", &[KIND], 1).await;
    let a = cluster.client(A).await;
    let b = cluster.client(B).await;
    let task = assigned(&a, &mut worker, research("comets")).await;

    worker.ask(&task.id, "which century?");
    let waiting = wait_state(&b, &task.id, TaskState::WaitingForAnswer).await;
    assert_eq!(waiting.question, "which century?");

    let resumed = b.answer(&task.id, "the 19th").await.unwrap();
    assert_eq!(resumed.state(), TaskState::Running);
    let answer = worker.expect_answer().await;
    assert_eq!(
        (answer.task_id.as_str(), answer.answer.as_str()),
        (task.id.as_str(), "the 19th")
    );
    let now = b.check(&task.id).await.unwrap();
    assert_eq!(now.state(), TaskState::Running);
    assert!(now.question.is_empty());
    assert_eq!(now.answer, "the 19th");
}

// ---- lost workers ----

#[tokio::test]
async fn a_lost_worker_fails_its_task_when_no_attempts_are_left() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut worker = research_worker(&server, "doomed", 1).await;
    let task = assigned(&client, &mut worker, research("storms")).await;
    let label = worker.label();
    worker.disconnect();

    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Failed);
    assert!(
        done.error.contains("lost") && done.error.contains(&label),
        "the error says the worker was lost: {:?}",
        done.error
    );
    assert!(active(&client).await.is_empty(), "nothing stays RUNNING");
}

#[tokio::test]
async fn a_lost_worker_requeues_a_task_with_attempts_left_for_another_worker() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut first = research_worker(&server, "first", 1).await;
    let task = assigned(&client, &mut first, research("reefs").max_attempts(2)).await;
    first.checkpoint(&task.id, 0.5, json!({"page": 1}));
    wait_for(&client, &task.id, "a checkpoint", |task| {
        !task.partial_results.is_empty()
    })
    .await;
    first.disconnect();

    let requeued = wait_state(&client, &task.id, TaskState::Pending).await;
    assert!(requeued.owner.is_empty() && requeued.worker.is_empty());
    assert_eq!(requeued.attempt, 1);
    assert_eq!(requeued.partial_results.len(), 1, "checkpoints are kept");

    let mut second = research_worker(&server, "second", 1).await;
    let assignment = second.expect_assign().await;
    assert_eq!(
        (assignment.id.as_str(), assignment.attempt),
        (task.id.as_str(), 2)
    );
    let running = wait_state(&client, &task.id, TaskState::Running).await;
    assert_eq!(running.attempt, 2);
    assert_eq!(running.worker, second.label());

    second.complete(&task.id, json!({"reefs": 4}));
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Completed);
}

#[tokio::test]
async fn a_lost_worker_cancels_a_task_with_a_soft_cancel_requested() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut worker = research_worker(&server, "w", 1).await;
    let task = assigned(&client, &mut worker, research("caves").max_attempts(2)).await;
    client
        .soft_cancel(&task.id, "not needed", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    worker.expect_cancel().await;
    worker.disconnect();

    let done = wait_finished(&client, &task.id).await;
    assert_eq!(
        done.state(),
        TaskState::Cancelled,
        "not retried: it was cancelled"
    );
    let cancel = done.cancel.unwrap();
    assert!(
        !cancel.escalated,
        "settled by the loss, not the grace deadline"
    );
    assert!(system_time(done.finished_at.as_ref()) < system_time(cancel.grace_deadline.as_ref()));
    assert!(active(&client).await.is_empty(), "nothing stays RUNNING");
}

#[tokio::test]
async fn a_lost_worker_fails_its_task_waiting_for_an_answer() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut worker = research_worker(&server, "w", 1).await;
    let task = assigned(&client, &mut worker, research("moons")).await;
    worker.ask(&task.id, "which planet?");
    wait_state(&client, &task.id, TaskState::WaitingForAnswer).await;
    worker.disconnect();

    // The loss is seen when the stream ends: well within 5 s.
    let settled =
        tokio::time::timeout(Duration::from_secs(5), wait_finished(&client, &task.id)).await;
    let now = client.check(&task.id).await.unwrap();
    assert!(
        settled.is_ok(),
        "the task of a lost worker is still {:?} (version {})",
        now.state(),
        now.version
    );
    assert_eq!(now.state(), TaskState::Failed);
    assert!(now.error.contains("lost"), "{:?}", now.error);
}

// ---- bad worker input ----

#[tokio::test]
async fn a_first_message_that_is_not_hello_is_failed_precondition() {
    let server = Reinsd::start();
    let progress = message(Message::Complete(TaskComplete {
        task_id: "01890000-0000-7000-8000-000000000000".into(),
        result: None,
    }));
    let status = refusal(&server.url(), vec![progress]).await;
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::FailedPrecondition, "WORKER_PROTOCOL"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_second_hello_ends_the_stream_with_failed_precondition() {
    let server = Reinsd::start();
    let mut worker = research_worker(&server, "w", 1).await;
    worker.send(hello("w", &[KIND], 1));
    let status = worker.closed().await.expect("an error status");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::FailedPrecondition, "WORKER_PROTOCOL"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_hello_with_a_built_in_kind_or_no_kinds_is_invalid_argument() {
    let server = Reinsd::start();
    let client = server.client().await;
    for kinds in [&["sleep"][..], &[KIND, "exec"][..], &[][..]] {
        let status = refusal(&server.url(), vec![hello("bad", kinds, 1)]).await;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "kinds {kinds:?}: {status:?}"
        );
        assert_eq!(bad_fields(&status), ["hello.kinds"], "kinds {kinds:?}");
    }
    let status = client.start(research("refused")).await.unwrap_err();
    assert_eq!(
        reason(&status),
        "KIND_UNKNOWN",
        "a refused hello registers no kind"
    );
}

#[tokio::test]
async fn messages_about_unknown_tasks_or_another_workers_task_are_ignored() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut owner = research_worker(&server, "owner", 1).await;
    let theirs = assigned(&client, &mut owner, research("theirs")).await;
    let mut meddler = research_worker(&server, "meddler", 1).await;
    let mine = assigned(&client, &mut meddler, research("mine")).await;
    let before = client.check(&theirs.id).await.unwrap();

    let unknown = "01890000-0000-7000-8000-000000000000";
    for id in [theirs.id.as_str(), unknown, "not-a-task-id"] {
        meddler.progress(id, 0.9, "meddling");
        meddler.checkpoint(id, 0.9, json!({"forged": true}));
        meddler.ask(id, "forged?");
        meddler.cancel_ack(id, json!({"forged": true}));
        meddler.fail(id, "forged failure");
        meddler.send(message(Message::Fail(TaskFail {
            task_id: id.to_owned(),
            error: String::new(),
        })));
        meddler.complete(id, json!({"forged": true}));
    }
    // Handled in order: once this shows, the messages before it have been handled.
    meddler.progress(&mine.id, 0.5, "still here");
    wait_progress(&client, &mine.id, "still here").await;
    meddler.assert_quiet(WINDOW).await;

    let after = client.check(&theirs.id).await.unwrap();
    assert_eq!(after, before, "the other worker's task is unaffected");
    meddler.complete(&mine.id, json!({"mine": true}));
    let done = wait_finished(&client, &mine.id).await;
    assert_eq!(done.state(), TaskState::Completed, "the stream stayed open");

    owner.complete(&theirs.id, json!({"theirs": true}));
    let done = wait_finished(&client, &theirs.id).await;
    assert_eq!(json_of(done.result.as_ref()), json!({"theirs": true}));
    assert!(
        !matches!(meddler.next_within(WINDOW).await, Next::Closed(_)),
        "the meddler's stream is still open"
    );
}

#[tokio::test]
async fn a_workers_question_with_a_timeout_resumes_it_unanswered() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut worker = research_worker(&server, "w", 1).await;
    let task = assigned(&client, &mut worker, research("deadlines")).await;
    worker.ask_within(&task.id, "which source?", Some(Duration::from_millis(200)));
    let answer = worker.expect_answer().await;
    assert!(answer.timed_out);
    assert!(answer.answer.is_empty());
    let task = client.check(&task.id).await.unwrap();
    assert_eq!(task.state(), TaskState::Running);
    assert!(task.answer_timed_out);
    let status = client.answer(&task.id, "late").await.unwrap_err();
    assert_eq!(reason(&status), "TASK_NOT_WAITING");
}
