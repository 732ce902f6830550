//! Authentication and roles against a real server with an `--auth-config`: static tokens,
//! JWTs (valid, expired), roles per RPC, worker kinds, open health, and a config rewritten
//! while the server runs. (Tenant isolation has its own matrix: `tenants.rs`.)

use reins_client::proto::TaskState;
use reins_client::{Client, StartTask};
use reins_e2e::auth::{AuthFile, client_with_token, sha256_hex};
use reins_e2e::worker::hello;
use reins_e2e::{FakeWorker, Reinsd, eventually, reason, sleep_params, wait_finished};
use tonic::Code;

pub fn principals() -> String {
    let entry = |name: &str, tenant: Option<&str>, roles: &str, extra: &str| {
        let tenant = tenant
            .map(|t| format!("tenant = \"{t}\"\n"))
            .unwrap_or_default();
        format!(
            "[[principal]]\nname = \"{name}\"\n{tenant}roles = [{roles}]\ntoken_sha256 = \"{}\"\n{extra}\n",
            sha256_hex(&format!("{name}-token"))
        )
    };
    [
        entry("alice", Some("acme"), "\"operator\"", ""),
        entry("victor", Some("acme"), "\"viewer\"", ""),
        entry("bob", Some("globex"), "\"operator\"", ""),
        entry(
            "acme-worker",
            Some("acme"),
            "\"worker\"",
            "kinds = [\"research\"]",
        ),
        entry(
            "globex-worker",
            Some("globex"),
            "\"worker\"",
            "kinds = [\"research\"]",
        ),
        entry("ops", None, "\"admin\"", ""),
    ]
    .concat()
}

pub fn auth_server(file: &AuthFile, extra: &[&str]) -> Reinsd {
    let path = file.path().to_str().unwrap().to_owned();
    let mut args = vec!["--auth-config", &path, "--worker-kind", "research"];
    args.extend(extra);
    Reinsd::with_args(&args)
}

fn code_and_reason(status: &tonic::Status) -> (Code, String) {
    (status.code(), reason(status))
}

#[tokio::test]
async fn tokens_and_jwts_authenticate_and_roles_decide_what_each_may_call() {
    let file = AuthFile::new(&principals());
    let server = auth_server(&file, &[]);
    let sleep = || StartTask::new("sleep").params(sleep_params(1, 1));

    let anonymous = Client::connect(server.url()).await.unwrap();
    let refused = anonymous.start(sleep()).await.unwrap_err();
    assert_eq!(
        code_and_reason(&refused),
        (Code::Unauthenticated, "UNAUTHENTICATED".into())
    );
    let wrong = client_with_token(&server.url(), "not-a-token").await;
    let refused = wrong.start(sleep()).await.unwrap_err();
    assert_eq!(
        code_and_reason(&refused),
        (Code::Unauthenticated, "UNAUTHENTICATED".into())
    );

    let alice = client_with_token(&server.url(), "alice-token").await;
    let task = alice.start(sleep()).await.expect("an operator starts");
    assert_eq!(
        wait_finished(&alice, &task.id).await.state(),
        TaskState::Completed
    );
    let viewer = client_with_token(&server.url(), "victor-token").await;
    viewer.check(&task.id).await.expect("a viewer reads");
    let refused = viewer.start(sleep()).await.unwrap_err();
    assert_eq!(
        code_and_reason(&refused),
        (Code::PermissionDenied, "ROLE_REQUIRED".into())
    );
    let worker = client_with_token(&server.url(), "acme-worker-token").await;
    let refused = worker.check(&task.id).await.unwrap_err();
    assert_eq!(
        code_and_reason(&refused),
        (Code::PermissionDenied, "ROLE_REQUIRED".into())
    );

    let jwt = file.jwt("carol", Some("acme"), &["operator"], 0);
    let carol = client_with_token(&server.url(), &jwt).await;
    let started = carol.start(sleep()).await.expect("a JWT operator starts");
    carol
        .check(&started.id)
        .await
        .expect("and reads its tenant's task");
    let expired = file.jwt("carol", Some("acme"), &["operator"], -7200);
    let refused = client_with_token(&server.url(), &expired)
        .await
        .check(&started.id)
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&refused),
        (Code::Unauthenticated, "UNAUTHENTICATED".into())
    );
    assert!(
        refused.message().contains("xpired"),
        "{}",
        refused.message()
    );

    // Health stays open.
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health without credentials");
    assert_eq!(health.into_inner().status, 1);
}

#[tokio::test]
async fn a_worker_principal_serves_only_its_kinds() {
    let file = AuthFile::new(&principals());
    let server = auth_server(&file, &["--worker-kind", "other"]);
    let refused = FakeWorker::open_as(
        &server.url(),
        Some("acme-worker-token"),
        "w",
        vec![hello("w", &["research", "other"], 1)],
    )
    .await;
    let status = match refused {
        Err(status) => status,
        Ok(mut worker) => match worker.next_within(reins_e2e::PATIENCE).await {
            reins_e2e::worker::Next::Closed(Some(status)) => status,
            other => panic!("a hello with a kind outside the principal's was served: {other:?}"),
        },
    };
    assert_eq!(
        code_and_reason(&status),
        (Code::PermissionDenied, "KIND_NOT_ALLOWED".into())
    );
    let anonymous =
        FakeWorker::open_as(&server.url(), None, "w", vec![hello("w", &["research"], 1)]).await;
    assert_eq!(
        anonymous.err().map(|s| s.code()),
        Some(Code::Unauthenticated)
    );
    FakeWorker::connect_as(
        &server.url(),
        Some("acme-worker-token"),
        "w",
        &["research"],
        1,
    )
    .await;
}

#[tokio::test]
async fn a_rewritten_auth_config_is_used_without_a_restart() {
    let file = AuthFile::new(&principals());
    let server = auth_server(&file, &["--reload-interval", "100ms"]);
    let newcomer = client_with_token(&server.url(), "dave-token").await;
    assert_eq!(
        newcomer.list(Default::default()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let dave = format!(
        "[[principal]]\nname = \"dave\"\ntenant = \"acme\"\nroles = [\"viewer\"]\ntoken_sha256 = \"{}\"\n",
        sha256_hex("dave-token")
    );
    file.write(&format!("{}{dave}", principals()));
    eventually("the new principal is known", || async {
        newcomer.list(Default::default()).await.ok()
    })
    .await;
    // A file that does not load keeps the previous config.
    std::fs::write(file.path(), "[[principal]\nbroken").unwrap();
    eventually("the broken file is reported", || async {
        server.log().contains("cannot reload").then_some(())
    })
    .await;
    newcomer
        .list(Default::default())
        .await
        .expect("the previous config is still in force");
}

#[tokio::test]
async fn a_server_without_auth_on_a_non_loopback_address_warns_loudly() {
    let open = Reinsd::with_args(&["--listen", "0.0.0.0:0"]);
    eventually("the warning", || async {
        open.log().contains("AUTHENTICATION IS OFF").then_some(())
    })
    .await;
    let local = Reinsd::start();
    local.client().await;
    assert!(
        !local.log().contains("AUTHENTICATION IS OFF"),
        "{}",
        local.log()
    );
}
