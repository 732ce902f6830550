//! CancelTasks: every active task matching a filter is cancelled with its subtree, on
//! every replica; a cancelled session refuses late starts; dry runs only count.

use std::collections::HashSet;

use reins_client::proto::{CancelMode, CancelTasksRequest, ListActiveRequest, TaskState};
use reins_client::{Client, StartTask};
use reins_e2e::{Cluster, Reinsd, bad_fields, eventually, long_sleep, reason, wait_finished};
use tonic::Code;

fn session(id: &str) -> CancelTasksRequest {
    CancelTasksRequest {
        session_id: id.into(),
        reason: "the user pressed Stop".into(),
        ..CancelTasksRequest::default()
    }
}

async fn active_ids(client: &Client, filter: ListActiveRequest) -> HashSet<String> {
    use tokio_stream::StreamExt;
    client
        .list_all(filter)
        .map(|task| task.expect("list").id)
        .collect()
        .await
}

#[tokio::test]
async fn a_session_is_cancelled_whole_pending_tasks_too_and_late_starts_are_refused() {
    // Two slots: most of the session's tasks wait PENDING.
    let server = Reinsd::with_args(&["--max-concurrency", "2"]);
    let client = server.client().await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let task = client.start(long_sleep().session("s1")).await.unwrap();
        ids.push(task.id);
    }
    let child = client.start(long_sleep().parent(&ids[0])).await.unwrap();
    let other = client.start(long_sleep().session("s2")).await.unwrap();

    let dry = client
        .cancel_tasks(CancelTasksRequest {
            dry_run: true,
            ..session("s1")
        })
        .await
        .unwrap();
    assert_eq!((dry.matched, dry.cancelled, dry.requested), (6, 0, 0));
    assert_eq!(dry.task_ids, ids, "in creation order");
    let dry_started = client.start(long_sleep().session("s1")).await.unwrap();
    ids.push(dry_started.id);

    let done = client.cancel_tasks(session("s1")).await.unwrap();
    assert_eq!(done.matched, 7);
    assert_eq!(done.cancelled + done.requested + done.already_finished, 7);
    // The PENDING ones are CANCELLED at once, before the started ones stop and free their
    // places (which would start a queued task of the session first).
    assert_eq!((done.cancelled, done.requested), (5, 2), "{done:?}");
    assert!(!done.truncated);
    for id in ids.iter().chain([&child.id]) {
        let task = wait_finished(&client, id).await;
        assert_eq!(task.state(), TaskState::Cancelled, "{id}");
    }
    // A late start in the cancelled session is refused; other sessions are untouched.
    let status = client.start(long_sleep().session("s1")).await.unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::FailedPrecondition, "SESSION_CANCELLED")
    );
    let other = client.check(&other.id).await.unwrap();
    assert!(other.cancel.is_none());
    client.start(long_sleep().session("s2")).await.unwrap();
    client.cancel_tasks(session("s2")).await.unwrap();
}

#[tokio::test]
async fn by_label_and_kind_hard_and_not_a_task_more() {
    let server = Reinsd::start();
    let client = server.client().await;
    let mut tagged = Vec::new();
    for _ in 0..3 {
        tagged.push(
            client
                .start(long_sleep().label("run", "r1"))
                .await
                .unwrap()
                .id,
        );
    }
    let untagged = client.start(long_sleep().label("run", "r2")).await.unwrap();
    let done = client
        .cancel_tasks(CancelTasksRequest {
            labels: [("run".to_owned(), "r1".to_owned())].into(),
            mode: CancelMode::Hard as i32,
            ..CancelTasksRequest::default()
        })
        .await
        .unwrap();
    assert_eq!((done.matched, done.cancelled), (3, 3));
    for id in &tagged {
        assert_eq!(
            client.check(id).await.unwrap().state(),
            TaskState::Cancelled
        );
    }
    assert!(client.check(&untagged.id).await.unwrap().cancel.is_none());
    // By kind: a filter may be wide, but it must be given.
    let done = client
        .cancel_tasks(CancelTasksRequest {
            kind: "sleep".into(),
            ..CancelTasksRequest::default()
        })
        .await
        .unwrap();
    assert_eq!((done.matched, done.requested), (1, 1));
}

#[tokio::test]
async fn a_thousand_and_more_tasks_are_cancelled_and_the_ids_capped() {
    let server = Reinsd::with_args(&["--max-concurrency", "8"]);
    let client = server.client().await;
    let mut starts = tokio::task::JoinSet::new();
    for _ in 0..1010 {
        let client = client.clone();
        starts.spawn(async move { client.start(long_sleep().session("big")).await });
    }
    while let Some(started) = starts.join_next().await {
        started.unwrap().expect("start");
    }
    // Starts keep coming while the call runs: each is refused, or cancelled by the call.
    let late = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            loop {
                match client.start(long_sleep().session("big")).await {
                    Ok(task) => accepted.push(task.id),
                    Err(status) => {
                        assert_eq!(reason(&status), "SESSION_CANCELLED");
                        return accepted;
                    }
                }
            }
        })
    };
    let done = client.cancel_tasks(session("big")).await.unwrap();
    let accepted = late.await.unwrap();
    assert_eq!(done.matched as usize, 1010 + accepted.len());
    assert_eq!(done.task_ids.len(), 1000);
    assert!(done.truncated);
    let filter = ListActiveRequest {
        session_id: "big".into(),
        ..ListActiveRequest::default()
    };
    eventually("every task of the session to stop", || async {
        active_ids(&client, filter.clone())
            .await
            .is_empty()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn bad_cancel_tasks_requests_name_the_field() {
    let server = Reinsd::start();
    let client = server.client().await;
    let cases = [
        (CancelTasksRequest::default(), "kind"),
        (
            CancelTasksRequest {
                mode: 7,
                ..session("s")
            },
            "mode",
        ),
        (
            CancelTasksRequest {
                mode: CancelMode::Hard as i32,
                grace_period: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                ..session("s")
            },
            "grace_period",
        ),
        (
            CancelTasksRequest {
                grace_period: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..session("s")
            },
            "grace_period",
        ),
        (
            CancelTasksRequest {
                parent_id: "nope".into(),
                ..CancelTasksRequest::default()
            },
            "parent_id",
        ),
    ];
    for (request, field) in cases {
        let status = client.cancel_tasks(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
        assert_eq!(bad_fields(&status), [field], "{request:?}");
    }
}

/// Tasks running on both replicas, cancelled through one of them.
#[tokio::test]
async fn a_bulk_cancel_reaches_every_replica() {
    let cluster = Cluster::start(2, &["--max-concurrency", "3"]);
    let clients = [cluster.client(0).await, cluster.client(1).await];
    let mut ids = Vec::new();
    for i in 0..10 {
        let task = clients[i % 2]
            .start(
                StartTask::new("sleep")
                    .params(serde_json::json!({"steps": 10_000, "step_ms": 50}))
                    .session("x"),
            )
            .await
            .unwrap();
        ids.push(task.id);
    }
    let done = clients[0].cancel_tasks(session("x")).await.unwrap();
    assert_eq!(done.matched, 10);
    for id in &ids {
        let task = wait_finished(&clients[1], id).await;
        assert_eq!(task.state(), TaskState::Cancelled);
    }
    let status = clients[1]
        .start(long_sleep().session("x"))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "SESSION_CANCELLED");
}
