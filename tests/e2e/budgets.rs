//! Budgets: usage reported by tasks (sleep's steps, workers' `usage`) rolls up to every
//! ancestor, and the server soft-cancels a subtree whose usage reaches its budget.

use reins_client::proto::worker_command::Command;
use reins_client::proto::{CancelMode, TaskState};
use reins_client::{Client, StartTask};
use reins_e2e::{
    Cluster, FakeWorker, Reinsd, eventually, json_of, long_sleep, reason, sleep_params,
    wait_finished,
};
use tonic::Code;

const KIND: &str = "agent";

async fn subtree(client: &Client, id: &str, dimension: &str) -> f64 {
    let task = client.check(id).await.expect("check");
    task.subtree_usage.get(dimension).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn a_budget_stops_a_sleep_task_after_exactly_n_steps() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = client
        .start(
            StartTask::new("sleep")
                .params(sleep_params(100, 20))
                .budget("steps", 3.0),
        )
        .await
        .unwrap();
    assert_eq!(task.budget["steps"], 3.0);
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Cancelled);
    let cancel = done.cancel.clone().expect("a cancel");
    assert_eq!(cancel.mode(), CancelMode::Soft);
    assert_eq!(cancel.budget_exhausted, "steps");
    assert_eq!(cancel.reason, "budget exhausted: steps 3 of 3");
    assert!(!cancel.escalated, "it stopped by itself within the grace");
    assert_eq!(json_of(done.result.as_ref())["steps_completed"], 3);
    assert_eq!(done.partial_results.len(), 3, "partial results are kept");
    let read = client.check(&task.id).await.unwrap();
    assert_eq!(read.usage["steps"], 3.0);
    assert_eq!(read.subtree_usage["steps"], 3.0);
}

#[tokio::test]
async fn no_child_starts_under_an_exhausted_budget() {
    let server = Reinsd::start();
    let client = server.client().await;
    // It ignores the soft cancel, so it is still active when the child is started.
    let parent = client
        .start(
            StartTask::new("sleep")
                .params(
                    serde_json::json!({"steps": 1000, "step_ms": 20, "ignore_soft_cancel": true}),
                )
                .budget("steps", 2.0),
        )
        .await
        .unwrap();
    eventually("the budget to be exhausted", || async {
        let task = client.check(&parent.id).await.unwrap();
        task.cancel.filter(|c| c.budget_exhausted == "steps")
    })
    .await;
    let status = client
        .start(long_sleep().parent(&parent.id))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::FailedPrecondition, "BUDGET_EXHAUSTED")
    );
    assert!(
        status.message().contains("budget exhausted: steps"),
        "{}",
        status.message()
    );
    client.hard_cancel(&parent.id, "done").await.unwrap();
}

#[tokio::test]
async fn usage_of_many_concurrent_children_is_never_lost() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut worker = FakeWorker::connect(&server.url(), "w", &[KIND], 50).await;
    let root = client
        .start(long_sleep().budget("tokens", 1e9))
        .await
        .unwrap();
    let mut children = Vec::new();
    for _ in 0..50 {
        let child = client
            .start(StartTask::new(KIND).parent(&root.id))
            .await
            .unwrap();
        children.push(child.id);
    }
    for _ in 0..50 {
        worker.expect_assign().await;
    }
    // Every child reports ten increments, all sent at once.
    for _ in 0..10 {
        for child in &children {
            worker.spend(child, &[("tokens", 1.5)]);
        }
    }
    let mut acks = 0;
    while acks < 500 {
        if let Command::UsageAck(ack) = worker.next().await {
            assert!(ack.budget_remaining["tokens"] <= 1e9);
            acks += 1;
        }
    }
    assert_eq!(subtree(&client, &root.id, "tokens").await, 750.0);
    client.hard_cancel(&root.id, "done").await.unwrap();
}

#[tokio::test]
async fn workers_see_what_is_left_of_the_budget() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut worker = FakeWorker::connect(&server.url(), "w", &[KIND], 1).await;
    let parent = client
        .start(long_sleep().budget("tokens", 100.0).budget("cost_usd", 1.0))
        .await
        .unwrap();
    let child = client
        .start(
            StartTask::new(KIND)
                .parent(&parent.id)
                .budget("tokens", 500.0),
        )
        .await
        .unwrap();
    let assignment = worker.expect_assignment().await;
    assert_eq!(assignment.budget_remaining["tokens"], 100.0, "the tightest");
    assert_eq!(assignment.budget_remaining["cost_usd"], 1.0);
    worker.spend(&child.id, &[("tokens", 60.0), ("cost_usd", 0.25)]);
    let ack = worker.expect_usage_ack().await;
    assert_eq!(ack.task_id, child.id);
    assert_eq!(ack.budget_remaining["tokens"], 40.0);
    assert_eq!(ack.budget_remaining["cost_usd"], 0.75);
    // The report that crosses the parent's limit is recorded (it overshoots) and stops the
    // whole tree.
    worker.spend(&child.id, &[("tokens", 50.0)]);
    let cancel = loop {
        match worker.next().await {
            Command::Cancel(cancel) => break cancel,
            Command::UsageAck(_) => {}
            other => panic!("expected a cancel, got {other:?}"),
        }
    };
    assert!(
        cancel
            .reason
            .contains("budget exhausted: tokens 110 of 100"),
        "{}",
        cancel.reason
    );
    worker.cancel_ack(&child.id, serde_json::json!({"partial": true}));
    let parent = wait_finished(&client, &parent.id).await;
    assert_eq!(parent.state(), TaskState::Cancelled);
    assert_eq!(parent.cancel.unwrap().budget_exhausted, "tokens");
    let child = wait_finished(&client, &child.id).await;
    assert_eq!(child.state(), TaskState::Cancelled);
    assert_eq!(child.usage["tokens"], 110.0);
    assert_eq!(subtree(&client, &parent.id, "tokens").await, 110.0);
}

#[tokio::test]
async fn bad_usage_from_a_worker_ends_its_stream() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut worker = FakeWorker::connect(&server.url(), "w", &[KIND], 1).await;
    let task = client.start(StartTask::new(KIND)).await.unwrap();
    worker.expect_assign().await;
    worker.spend(&task.id, &[("tokens", -1.0)]);
    let status = worker.closed().await.expect("an error status");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("usage"), "{}", status.message());
}

/// The cross-replica case: the root runs on A, its grandchildren on a worker of B; their
/// spending stops the whole tree.
#[tokio::test]
async fn a_parents_budget_stops_a_tree_spending_in_grandchildren_on_another_replica() {
    const A: usize = 0;
    const B: usize = 1;
    let cluster = Cluster::start(2, &[]);
    let on_a = cluster.client(A).await;
    let on_b = cluster.client(B).await;
    let mut worker = FakeWorker::connect(&cluster.replica(B).url(), "on-b", &[KIND], 4).await;
    let root = on_a
        .start(long_sleep().budget("tokens", 100.0))
        .await
        .unwrap();
    let child = on_a.start(long_sleep().parent(&root.id)).await.unwrap();
    let mut grandchildren = Vec::new();
    for _ in 0..2 {
        let task = on_b
            .start(StartTask::new(KIND).parent(&child.id))
            .await
            .unwrap();
        grandchildren.push(task.id);
        worker.expect_assign().await;
    }
    let root_owner = cluster.owner_of(&on_b.check(&root.id).await.unwrap());
    assert_eq!(root_owner, A);
    for grandchild in &grandchildren {
        worker.spend(grandchild, &[("tokens", 30.0)]);
    }
    worker.spend(&grandchildren[0], &[("tokens", 40.0)]);
    let mut cancelled = 0;
    while cancelled < 2 {
        if let Command::Cancel(cancel) = worker.next().await {
            worker.cancel_ack(&cancel.task_id, serde_json::json!({}));
            cancelled += 1;
        }
    }
    for id in [&root.id, &child.id, &grandchildren[0], &grandchildren[1]] {
        let done = wait_finished(&on_b, id).await;
        assert_eq!(done.state(), TaskState::Cancelled, "{id}");
    }
    let root = on_b.check(&root.id).await.unwrap();
    assert_eq!(root.cancel.unwrap().budget_exhausted, "tokens");
    assert_eq!(root.subtree_usage["tokens"], 100.0);
}

#[tokio::test]
async fn a_tree_deeper_than_32_levels_is_refused() {
    let server = Reinsd::start();
    let client = server.client().await;
    let root = client.start(long_sleep()).await.unwrap();
    let mut parent = root.id.clone();
    for _ in 1..32 {
        parent = client.start(long_sleep().parent(&parent)).await.unwrap().id;
    }
    let status = client
        .start(long_sleep().parent(&parent))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::FailedPrecondition, "TREE_TOO_DEEP")
    );
    client.hard_cancel(&root.id, "done").await.unwrap();
}

#[tokio::test]
async fn a_bad_question_timeout_from_a_worker_ends_its_stream() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut worker = FakeWorker::connect(&server.url(), "w", &[KIND], 1).await;
    let task = client.start(StartTask::new(KIND)).await.unwrap();
    worker.expect_assign().await;
    worker.send(reins_e2e::worker::message(
        reins_client::proto::worker_message::Message::Ask(reins_client::proto::TaskAsk {
            task_id: task.id.clone(),
            question: "?".into(),
            timeout: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
        }),
    ));
    let status = worker.closed().await.expect("an error status");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("ask.timeout"),
        "{}",
        status.message()
    );
}

/// The same over two replicas: half the children run on a worker of each.
#[tokio::test]
async fn usage_of_children_on_two_replicas_is_never_lost() {
    let cluster = Cluster::start(2, &[]);
    let clients = [cluster.client(0).await, cluster.client(1).await];
    let mut workers = [
        FakeWorker::connect(&cluster.replica(0).url(), "on-a", &[KIND], 25).await,
        FakeWorker::connect(&cluster.replica(1).url(), "on-b", &[KIND], 25).await,
    ];
    let root = clients[0]
        .start(long_sleep().budget("tokens", 1e9))
        .await
        .unwrap();
    let mut children: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for (i, worker) in workers.iter_mut().enumerate() {
        for _ in 0..25 {
            clients[i]
                .start(StartTask::new(KIND).parent(&root.id))
                .await
                .unwrap();
            children[i].push(worker.expect_assign().await.id);
        }
    }
    for _ in 0..4 {
        for (i, worker) in workers.iter().enumerate() {
            for child in &children[i] {
                worker.spend(child, &[("tokens", 0.5)]);
            }
        }
    }
    for worker in &mut workers {
        let mut acks = 0;
        while acks < 100 {
            if let Command::UsageAck(_) = worker.next().await {
                acks += 1;
            }
        }
    }
    assert_eq!(subtree(&clients[1], &root.id, "tokens").await, 100.0);
    clients[0].hard_cancel(&root.id, "done").await.unwrap();
}
