//! Reins on a Redis Cluster with replicas: a failover in the middle of a load of starts,
//! completions and cancels loses no finished result and no acknowledged cancel.
//!
//! Starts its own cluster of six nodes (three masters, a replica each), so it is
//! `#[ignore]`d in the ordinary runs; `tests/run.sh` runs it in its Redis Cluster step
//! (`cargo test -p reins-e2e --test e2e cluster:: -- --ignored`). The rest of the suite
//! runs on a cluster with `REINS_E2E_STORE=redis-cluster`.

use std::future::Future;
use std::time::{Duration, Instant};

use reins_client::proto::{Task, TaskState};
use reins_client::{Client, StartTask};
use reins_e2e::{
    Cluster, PATIENCE, RedisCluster, TestRedis, long_sleep, sleep_params, wait_finished,
};
use tonic::{Code, Status};

/// Short tasks and cancelled long ones per round of the load.
const ROUNDS: usize = 60;

/// Calls `call` until it answers something other than UNAVAILABLE (the failover's few
/// seconds, while a slot's master is being replaced), within [`PATIENCE`].
async fn through_failover<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        match call().await {
            Ok(answer) => return answer,
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("{what}: {status:?}"),
        }
    }
}

/// What the load did: the short tasks it started (each must complete) and the long tasks
/// whose hard cancel was acknowledged (each must end cancelled).
#[derive(Default)]
struct Done {
    completing: Vec<String>,
    cancelled: Vec<String>,
}

/// One round: a short task and a long one, through alternating replicas, the long one
/// hard-cancelled through the other. Starts carry request ids, so a retried start is the
/// same task.
async fn round(clients: &[Client; 2], i: usize, done: &mut Done) {
    let (via, other) = (&clients[i % 2], &clients[(i + 1) % 2]);
    let short = StartTask::new("sleep")
        .params(sleep_params(2, 5))
        .request_id(format!("short-{i}"));
    let short = through_failover("start a short task", || via.start(short.clone())).await;
    done.completing.push(short.id);
    let long = long_sleep().request_id(format!("long-{i}"));
    let long = through_failover("start a long task", || via.start(long.clone())).await;
    through_failover("hard-cancel the long task", || {
        other.hard_cancel(long.id.clone(), "failover test")
    })
    .await;
    done.cancelled.push(long.id);
}

#[tokio::test]
#[ignore = "starts a six-node Redis Cluster: tests/run.sh runs it in its cluster step"]
async fn a_failover_mid_load_loses_no_finished_result_and_no_acknowledged_cancel() {
    let redis = RedisCluster::start(3, 1);
    let cluster = Cluster::on_store(
        TestRedis::InCluster {
            url: redis.url(),
            prefix: "failover:".to_owned(),
        },
        2,
        &[],
    );
    let clients = [cluster.client(0).await, cluster.client(1).await];
    let mut done = Done::default();
    for i in 0..ROUNDS / 2 {
        round(&clients, i, &mut done).await;
    }
    // Every master holds shards; fail over each in turn while the load goes on.
    let masters = redis.master_ports();
    assert_eq!(masters.len(), 3, "three masters");
    let failing_over = std::thread::spawn(move || {
        for master in masters {
            redis.fail_over(master);
        }
        redis
    });
    let mut i = ROUNDS / 2;
    let mut during_failovers = 0;
    while !failing_over.is_finished() || i < ROUNDS {
        if !failing_over.is_finished() {
            during_failovers += 1;
        }
        round(&clients, i, &mut done).await;
        i += 1;
    }
    let _redis = failing_over.join().expect("the failovers");

    for id in &done.completing {
        let task: Task = wait_finished(&clients[0], id).await;
        assert_eq!(task.state(), TaskState::Completed, "{task:?}");
        assert!(task.result.is_some(), "its result is kept: {task:?}");
        assert_eq!(cluster.check_everywhere(id).await, task);
    }
    for id in &done.cancelled {
        let task = wait_finished(&clients[1], id).await;
        assert_eq!(task.state(), TaskState::Cancelled, "{task:?}");
        assert_eq!(cluster.check_everywhere(id).await, task);
    }
    assert!(
        during_failovers > 0,
        "the load went on while the masters were failed over"
    );
}
