//! Tenant isolation, total: every RPC × {own tenant, other tenant, no credentials, wrong
//! role, expired JWT, admin} with the code each must get, on one server (either store,
//! `REINS_E2E_STORE`) and across two replicas on Redis (the task made through one replica,
//! every call through the other). Another tenant's task is NOT_FOUND, never
//! PERMISSION_DENIED. Also: page tokens bound to tenant and filter, `request_id` per
//! tenant, audit fields (`tenant`, `created_by`, `requested_by`), and a worker of one
//! tenant never receiving another tenant's task of the same kind.

use std::fmt::Write as _;
use std::time::Duration;

use reins_client::proto::{ListActiveRequest, TaskState};
use reins_client::{Client, StartTask, WatchOptions};
use reins_e2e::auth::{AuthFile, client_with_token};
use reins_e2e::worker::{Next, hello};
use reins_e2e::{
    Cluster, FakeWorker, Reinsd, asking, long_sleep, reason, sleep_params, wait_state,
};
use reins_proto::v1::worker_command::Command;
use tokio_stream::StreamExt;
use tonic::{Code, Status};

use crate::auth::principals;

/// Who calls, per column of the matrix.
#[derive(Clone, Copy, Debug)]
enum Who {
    Own,
    Other,
    Nobody,
    WrongRole,
    ExpiredJwt,
    Admin,
}

const EVERYONE: [Who; 6] = [
    Who::Nobody,
    Who::ExpiredJwt,
    Who::WrongRole,
    Who::Other,
    Who::Own,
    Who::Admin,
];

/// The clients of one server, by column.
struct Callers {
    url: String,
    own: Client,
    other: Client,
    nobody: Client,
    viewer: Client,
    worker: Client,
    expired: Client,
    admin: Client,
    expired_token: String,
}

impl Callers {
    async fn new(url: &str, file: &AuthFile) -> Callers {
        let expired_token = file.jwt("carol", Some("acme"), &["operator"], -7200);
        Callers {
            url: url.to_owned(),
            own: client_with_token(url, "alice-token").await,
            other: client_with_token(url, "bob-token").await,
            nobody: Client::connect(url).await.expect("connect"),
            viewer: client_with_token(url, "victor-token").await,
            worker: client_with_token(url, "acme-worker-token").await,
            expired: client_with_token(url, &expired_token).await,
            admin: client_with_token(url, "ops-token").await,
            expired_token,
        }
    }

    /// The client of a column; `WrongRole` for a TaskService RPC that needs `operator`
    /// is the viewer, for one that needs `viewer` the worker principal.
    fn client(&self, who: Who, needs_operator: bool) -> &Client {
        match who {
            Who::Own => &self.own,
            Who::Other => &self.other,
            Who::Nobody => &self.nobody,
            Who::WrongRole if needs_operator => &self.viewer,
            Who::WrongRole => &self.worker,
            Who::ExpiredJwt => &self.expired,
            Who::Admin => &self.admin,
        }
    }
}

/// The answer a cell expects: success or a code with its ErrorInfo reason.
fn expected(rpc: &str, who: Who) -> Result<(), (Code, &'static str)> {
    let not_found = if rpc == "StartTask(parent)" {
        "PARENT_NOT_FOUND"
    } else {
        "TASK_NOT_FOUND"
    };
    match who {
        Who::Own | Who::Admin => Ok(()),
        // Another tenant's listing succeeds (without the task: checked separately), and so
        // does another tenant's worker (it just never gets this tenant's tasks).
        Who::Other if rpc == "ListActive" || rpc == "Connect" => Ok(()),
        Who::Other => Err((Code::NotFound, not_found)),
        Who::Nobody | Who::ExpiredJwt => Err((Code::Unauthenticated, "UNAUTHENTICATED")),
        Who::WrongRole => Err((Code::PermissionDenied, "ROLE_REQUIRED")),
    }
}

/// Runs the matrix: tasks are made through `maker`, every call goes to `callers`.
/// Returns one line per cell that did not get its expected answer.
async fn matrix(maker: &Callers, callers: &Callers) -> Vec<String> {
    let target = maker.own.start(long_sleep()).await.expect("target task");
    let mut failures = Vec::new();
    for who in EVERYONE {
        let reader = callers.client(who, false);
        let operator = callers.client(who, true);

        cell(
            &mut failures,
            "CheckTask",
            who,
            reader.check(&target.id).await.map(drop),
        );

        let listed = reader.list(ListActiveRequest::default()).await;
        if let Ok(page) = &listed {
            let sees = page.tasks.iter().any(|task| task.id == target.id);
            let should = matches!(who, Who::Own | Who::Admin);
            if sees != should {
                failures.push(format!("ListActive × {who:?}: lists the target: {sees}"));
            }
        }
        cell(&mut failures, "ListActive", who, listed.map(drop));

        let watched = match reader.watch(&target.id, WatchOptions::default()).await {
            Ok(mut events) => match events.next().await {
                Some(Ok(_)) => Ok(()),
                Some(Err(status)) => Err(status),
                None => Err(Status::internal("the watch ended without an event")),
            },
            Err(status) => Err(status),
        };
        cell(&mut failures, "WatchTask", who, watched);

        let child = StartTask::new("sleep")
            .params(sleep_params(1, 1))
            .parent(&target.id);
        cell(
            &mut failures,
            "StartTask(parent)",
            who,
            operator.start(child).await.map(drop),
        );

        let soft = maker
            .own
            .start(long_sleep())
            .await
            .expect("task to soft-cancel");
        let cancelled = operator.soft_cancel(&soft.id, "matrix", None).await;
        if let (Who::Own | Who::Admin, Ok(response)) = (who, &cancelled) {
            let by = response
                .task
                .as_ref()
                .and_then(|t| t.cancel.as_ref())
                .map(|c| c.requested_by.clone());
            let name = if matches!(who, Who::Own) {
                "alice"
            } else {
                "ops"
            };
            if by.as_deref() != Some(name) {
                failures.push(format!("SoftCancel × {who:?}: requested_by {by:?}"));
            }
        }
        cell(&mut failures, "SoftCancel", who, cancelled.map(drop));

        let hard = maker
            .own
            .start(long_sleep())
            .await
            .expect("task to hard-cancel");
        cell(
            &mut failures,
            "HardCancel",
            who,
            operator.hard_cancel(&hard.id, "matrix").await.map(drop),
        );

        let waiting = maker
            .own
            .start(asking("go on?"))
            .await
            .expect("asking task");
        wait_state(&maker.own, &waiting.id, TaskState::WaitingForAnswer).await;
        cell(
            &mut failures,
            "AnswerTask",
            who,
            operator.answer(&waiting.id, "yes").await.map(drop),
        );

        let token = match who {
            Who::Own => Some("acme-worker-token"),
            Who::Other => Some("globex-worker-token"),
            Who::Nobody => None,
            Who::WrongRole => Some("alice-token"),
            Who::ExpiredJwt => Some(callers.expired_token.as_str()),
            Who::Admin => Some("ops-token"),
        };
        cell(
            &mut failures,
            "Connect",
            who,
            connect(&callers.url, token).await,
        );
    }
    for task in maker
        .own
        .list_all(ListActiveRequest::default())
        .collect::<Vec<_>>()
        .await
    {
        let task = task.expect("list");
        let _ = maker.own.hard_cancel(&task.id, "cleanup").await;
    }
    failures
}

/// Notes a cell whose answer is not the expected one.
fn cell(failures: &mut Vec<String>, rpc: &str, who: Who, got: Result<(), Status>) {
    let want = expected(rpc, who);
    let got = got.map_err(|status| (status.code(), reason(&status)));
    let matches = match (&want, &got) {
        (Ok(()), Ok(())) => true,
        (Err((code, why)), Err((got_code, got_why))) => code == got_code && why == got_why,
        _ => false,
    };
    if !matches {
        failures.push(format!("{rpc} × {who:?}: expected {want:?}, got {got:?}"));
    }
}

/// Whether a worker with `token` is welcomed.
async fn connect(url: &str, token: Option<&str>) -> Result<(), Status> {
    let mut worker = FakeWorker::open_as(
        url,
        token,
        "matrix",
        vec![hello("matrix", &["research"], 1)],
    )
    .await?;
    match worker.next_within(reins_e2e::PATIENCE).await {
        Next::Command(Command::Welcome(_)) => Ok(()),
        Next::Closed(Some(status)) => Err(status),
        other => Err(Status::internal(format!("no welcome: {other:?}"))),
    }
}

fn report(failures: &[String]) -> String {
    let mut text = String::new();
    for failure in failures {
        let _ = writeln!(text, "  {failure}");
    }
    text
}

fn args(file: &AuthFile) -> Vec<String> {
    vec![
        "--auth-config".into(),
        file.path().to_str().unwrap().to_owned(),
        "--worker-kind".into(),
        "research".into(),
    ]
}

#[tokio::test]
async fn every_rpc_answers_each_caller_as_its_tenant_and_role_require() {
    let file = AuthFile::new(&principals());
    let args = args(&file);
    let server = Reinsd::with_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let callers = Callers::new(&server.url(), &file).await;
    let failures = matrix(&callers, &callers).await;
    assert!(
        failures.is_empty(),
        "cells with the wrong answer:\n{}",
        report(&failures)
    );
}

#[tokio::test]
async fn the_matrix_holds_across_two_replicas() {
    let file = AuthFile::new(&principals());
    let args = args(&file);
    let cluster = Cluster::start(2, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let maker = Callers::new(&cluster.replica(0).url(), &file).await;
    let callers = Callers::new(&cluster.replica(1).url(), &file).await;
    let failures = matrix(&maker, &callers).await;
    assert!(
        failures.is_empty(),
        "cells with the wrong answer:\n{}",
        report(&failures)
    );
}

#[tokio::test]
async fn tasks_record_their_tenant_and_creator_and_request_ids_are_per_tenant() {
    let file = AuthFile::new(&principals());
    let args = args(&file);
    let server = Reinsd::with_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let alice = client_with_token(&server.url(), "alice-token").await;
    let bob = client_with_token(&server.url(), "bob-token").await;
    let same = || {
        StartTask::new("sleep")
            .params(sleep_params(1, 1))
            .request_id("same-key")
    };
    let mine = alice.start(same()).await.expect("alice starts");
    assert_eq!(
        (mine.tenant.as_str(), mine.created_by.as_str()),
        ("acme", "alice")
    );
    let theirs = bob
        .start(same())
        .await
        .expect("bob starts with the same request id");
    assert_ne!(
        theirs.id, mine.id,
        "a request id of another tenant returned its task"
    );
    assert_eq!(
        (theirs.tenant.as_str(), theirs.created_by.as_str()),
        ("globex", "bob")
    );
    assert_eq!(
        alice.start(same()).await.expect("retry").id,
        mine.id,
        "idempotent per tenant"
    );
}

#[tokio::test]
async fn a_page_token_is_bound_to_its_tenant_and_filter() {
    let file = AuthFile::new(&principals());
    let args = args(&file);
    let server = Reinsd::with_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let alice = client_with_token(&server.url(), "alice-token").await;
    for _ in 0..3 {
        alice.start(long_sleep()).await.expect("start");
    }
    let first = alice
        .list(ListActiveRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("first page");
    assert!(!first.next_page_token.is_empty());
    let next = |token: &str, kind: &str| ListActiveRequest {
        page_size: 1,
        page_token: token.to_owned(),
        kind: kind.to_owned(),
        ..Default::default()
    };
    alice
        .list(next(&first.next_page_token, ""))
        .await
        .expect("the next page");
    let bob = client_with_token(&server.url(), "bob-token").await;
    let refused = bob
        .list(next(&first.next_page_token, ""))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let refused = alice
        .list(next(&first.next_page_token, "sleep"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
}

/// A worker of tenant A never receives tenant B's task of the same kind: on one replica
/// and when the tenants' workers are on different replicas.
#[tokio::test]
async fn a_worker_receives_only_its_own_tenants_tasks() {
    let file = AuthFile::new(&principals());
    let args = args(&file);
    let cluster = Cluster::start(2, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let (a, b) = (cluster.replica(0).url(), cluster.replica(1).url());
    // globex's worker is on replica a, acme's on b; acme's task is started through a.
    let mut globex =
        FakeWorker::connect_as(&a, Some("globex-worker-token"), "globex", &["research"], 4).await;
    let mut acme =
        FakeWorker::connect_as(&b, Some("acme-worker-token"), "acme", &["research"], 4).await;
    let alice = client_with_token(&a, "alice-token").await;
    let bob = client_with_token(&a, "bob-token").await;
    let research = || StartTask::new("research");
    let acme_task = alice.start(research()).await.expect("acme's task");
    match acme.next().await {
        Command::Assign(assignment) => {
            let task = assignment.task.expect("task");
            assert_eq!(
                (task.id.as_str(), task.tenant.as_str()),
                (acme_task.id.as_str(), "acme")
            );
        }
        other => panic!("acme's worker expected its task, got {other:?}"),
    }
    let globex_task = bob.start(research()).await.expect("globex's task");
    match globex.next().await {
        Command::Assign(assignment) => {
            let task = assignment.task.expect("task");
            assert_eq!(task.id, globex_task.id, "globex's worker got another task");
        }
        other => panic!("globex's worker expected its task, got {other:?}"),
    }
    // Neither got the other's: nothing more arrives.
    for worker in [&mut acme, &mut globex] {
        match worker.next_within(Duration::from_millis(500)).await {
            Next::Quiet => {}
            other => panic!("worker {} got something more: {other:?}", worker.name),
        }
    }
}
