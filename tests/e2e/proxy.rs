//! Behind a real L7 proxy, the stand-in for a mesh sidecar: nginx (`grpc_pass`) and
//! HAProxy (`proto h2`) in front of two replicas on Redis, with their stream and idle
//! timeouts cut to [`PROXY_TIMEOUT`]. Through each: reflection (grpcurl list), unary calls,
//! error codes with their google.rpc details, a client deadline on a stream, a quiet watch
//! outliving the proxy's timeouts (the server's heartbeats), and a replica drained
//! mid-load: its clients get UNAVAILABLE, retry on the other replica with the same
//! `request_id`, and no task is lost or started twice.
//!
//! They need nginx, haproxy and grpcurl: `#[ignore]`d in the plain `cargo test`, run by
//! tests/run.sh (`-- --ignored proxy::`) once it has installed them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reins_client::proto::{TaskState, WatchTaskRequest};
use reins_client::{Client, StartTask};
use reins_e2e::proxy::{PROXY_TIMEOUT, Proxy, ProxyKind, grpcurl};
use reins_e2e::{Cluster, PATIENCE, bad_fields, reason, sleep_params, wait_finished};
use tokio_stream::StreamExt;
use tonic::Code;

const A: usize = 0;
const B: usize = 1;
/// Heartbeats well inside the proxies' timeouts.
const HEARTBEAT: &str = "1s";
/// A grace long enough for the load to run into the drain.
const GRACE: &str = "3s";

/// Two replicas on Redis and `kind` in front of them.
fn behind(kind: ProxyKind) -> (Cluster, Proxy) {
    let cluster = Cluster::start(
        2,
        &[
            "--watch-heartbeat",
            HEARTBEAT,
            "--shutdown-grace",
            GRACE,
            "--worker-kind",
            "quiet",
        ],
    );
    let upstreams = [cluster.replica(A).address(), cluster.replica(B).address()];
    let proxy = Proxy::start(kind, &upstreams);
    (cluster, proxy)
}

async fn client_of(proxy: &Proxy, retrying: bool) -> Client {
    let client = Client::connect(proxy.url())
        .await
        .expect("connect through the proxy");
    if retrying {
        client
    } else {
        client.with_service_config(reins_client::ServiceConfig::default())
    }
}

/// A task that never changes: a worker kind no worker serves waits PENDING, quiet.
fn quiet_task() -> StartTask {
    StartTask::new("quiet").max_attempts(1)
}

async fn serves_unary_calls_reflection_errors_and_deadlines(kind: ProxyKind) {
    let (_cluster, proxy) = behind(kind);
    let listed = std::process::Command::new(grpcurl())
        .args(["-plaintext", proxy.address(), "list"])
        .output()
        .expect("run grpcurl");
    let services = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "grpcurl list: {listed:?}");
    for service in [
        "reins.v1.TaskService",
        "reins.v1.WorkerService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.lines().any(|line| line == service),
            "{service} in {services}"
        );
    }

    let client = client_of(&proxy, false).await;
    let task = client
        .start(StartTask::new("sleep").params(sleep_params(2, 10)))
        .await
        .unwrap();
    assert_eq!(
        wait_finished(&client, &task.id).await.state(),
        TaskState::Completed
    );

    let missing = client.check(uuid_like()).await.unwrap_err();
    assert_eq!(
        (missing.code(), reason(&missing).as_str()),
        (Code::NotFound, "TASK_NOT_FOUND")
    );
    let invalid = client.check("not-a-task-id").await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");
    assert_eq!(bad_fields(&invalid), ["task_id"]);

    // The client's deadline travels through the proxy and ends the stream there.
    let quiet = client.start(quiet_task()).await.unwrap();
    let mut request = tonic::Request::new(WatchTaskRequest {
        task_id: quiet.id.clone(),
        ..WatchTaskRequest::default()
    });
    request.set_timeout(Duration::from_secs(1));
    let began = Instant::now();
    let mut events = client.raw().watch_task(request).await.unwrap().into_inner();
    let ended = loop {
        match tokio::time::timeout(PATIENCE, events.next())
            .await
            .expect("the watch ends")
        {
            Some(Ok(_)) => {}
            Some(Err(status)) => break status,
            None => panic!("the watch ended OK before its deadline"),
        }
    };
    assert_eq!(ended.code(), Code::DeadlineExceeded, "{ended:?}");
    assert!(
        began.elapsed() < PROXY_TIMEOUT,
        "ended at {:?}",
        began.elapsed()
    );
    client.hard_cancel(&quiet.id, "done").await.unwrap();
}

/// An id that is well-formed and names no task.
fn uuid_like() -> &'static str {
    "01900000-0000-7000-8000-000000000000"
}

async fn a_quiet_watch_outlives_the_proxy_timeouts(kind: ProxyKind) {
    let (_cluster, proxy) = behind(kind);
    let client = client_of(&proxy, false).await;
    let quiet = client.start(quiet_task()).await.unwrap();
    let request = WatchTaskRequest {
        task_id: quiet.id.clone(),
        ..WatchTaskRequest::default()
    };
    let mut events = client.raw().watch_task(request).await.unwrap().into_inner();
    let began = Instant::now();
    let mut heartbeats = 0;
    while began.elapsed() < PROXY_TIMEOUT * 3 {
        // Twice the proxy's timeout: a proxy that cuts the stream says so first.
        let event = tokio::time::timeout(PROXY_TIMEOUT * 2, events.next())
            .await
            .expect("an event (a heartbeat) within the proxy's timeout")
            .expect("the watch is still open")
            .unwrap_or_else(|status| panic!("cut after {:?}: {status:?}", began.elapsed()));
        heartbeats += usize::from(event.heartbeat);
    }
    assert!(
        heartbeats >= 6,
        "{heartbeats} heartbeats in {:?}",
        began.elapsed()
    );
    client.hard_cancel(&quiet.id, "the end").await.unwrap();
    let last = loop {
        let event = tokio::time::timeout(PATIENCE, events.next())
            .await
            .expect("the cancel arrives")
            .expect("the terminal event")
            .expect("no error");
        if !event.heartbeat {
            break event.task.unwrap();
        }
    };
    assert_eq!(last.state(), TaskState::Cancelled);
    assert!(
        events.next().await.is_none(),
        "the watch ends OK after the terminal state"
    );
}

async fn a_replica_drained_mid_load_loses_and_duplicates_nothing(kind: ProxyKind) {
    let (mut cluster, proxy) = behind(kind);
    let plain = client_of(&proxy, false).await;
    let retrying = client_of(&proxy, true).await;
    // A task that keeps replica a draining for its whole grace (no attempt to hand back).
    let a = cluster.client(A).await;
    let holding = a
        .start(StartTask::new("sleep").params(sleep_params(10_000, 50)))
        .await
        .unwrap();
    let requests = 60;
    let mut unavailable = 0;
    let mut started = BTreeMap::new();
    let began = Instant::now();
    for i in 0..requests {
        if i == 10 {
            cluster.replica(A).signal(Signal::SIGTERM);
        }
        let request_id = format!("{kind:?}-load-{i}");
        let task = StartTask::new("sleep")
            .params(sleep_params(1, 10))
            .request_id(request_id.clone());
        let task = match plain.start(task.clone()).await {
            Ok(task) => task,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                unavailable += 1;
                retrying.start(task).await.unwrap_or_else(|status| {
                    panic!("request {i} failed after its retries: {status:?}")
                })
            }
        };
        started.insert(request_id, task.id);
        tokio::time::sleep(Duration::from_millis(50)).await; // spreads the load over the drain
    }
    assert!(
        unavailable > 0,
        "no client saw the drain ({requests} requests over {:?})",
        began.elapsed()
    );
    let ids: BTreeSet<&String> = started.values().collect();
    assert_eq!(ids.len(), requests, "one task per request");
    let b = cluster.client(B).await;
    for (request_id, id) in &started {
        let again = b
            .start(
                StartTask::new("sleep")
                    .params(sleep_params(1, 10))
                    .request_id(request_id.clone()),
            )
            .await
            .unwrap();
        assert_eq!(&again.id, id, "{request_id} names one task");
        assert_eq!(wait_finished(&b, id).await.state(), TaskState::Completed);
    }
    let status = cluster
        .replica_mut(A)
        .wait_exit(PATIENCE)
        .await
        .expect("the drained replica exits");
    assert!(status.success(), "{status:?}");
    assert!(wait_finished(&b, &holding.id).await.state().is_terminal());
}

macro_rules! through {
    ($($name:ident => $kind:expr),* $(,)?) => {
        $(
            mod $name {
                use super::*;

                #[tokio::test]
                #[ignore = "needs nginx, haproxy and grpcurl: tests/run.sh runs it"]
                async fn serves_unary_calls_reflection_errors_and_deadlines() {
                    super::serves_unary_calls_reflection_errors_and_deadlines($kind).await;
                }

                #[tokio::test]
                #[ignore = "needs nginx, haproxy and grpcurl: tests/run.sh runs it"]
                async fn a_quiet_watch_outlives_the_proxy_timeouts() {
                    super::a_quiet_watch_outlives_the_proxy_timeouts($kind).await;
                }

                #[tokio::test]
                #[ignore = "needs nginx, haproxy and grpcurl: tests/run.sh runs it"]
                async fn a_replica_drained_mid_load_loses_and_duplicates_nothing() {
                    super::a_replica_drained_mid_load_loses_and_duplicates_nothing($kind).await;
                }
            }
        )*
    };
}

through!(nginx => ProxyKind::Nginx, haproxy => ProxyKind::Haproxy);
