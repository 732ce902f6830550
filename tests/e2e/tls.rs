//! TLS on the gRPC port (`--tls-cert`, `--tls-key`, `--tls-client-ca`) with certificates made
//! in the test and the real Rust client: plaintext is refused, mutual TLS requires a client
//! certificate signed by the client CA, and a certificate rotated in place is used for new
//! connections without a restart while open streams go on.

use reins_client::proto::TaskState;
use reins_client::{Client, Credentials, WatchOptions};
use reins_e2e::pki::{self, Pki};
use reins_e2e::{Reinsd, eventually, sleep_params, wait_finished};
use tokio_stream::StreamExt;

fn tls_server(pki: &Pki, extra: &[&str]) -> (Reinsd, pki::CertFiles) {
    let files = pki.server("server");
    let cert = files.cert.to_str().unwrap().to_owned();
    let key = files.key.to_str().unwrap().to_owned();
    let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
    args.extend(extra);
    (Reinsd::with_args(&args), files)
}

/// Whether a call over a new connection with `credentials` succeeds.
async fn works(address: &str, credentials: &Credentials) -> bool {
    match pki::tls_client(address, credentials).await {
        Ok(client) => client
            .check("00000000-0000-0000-0000-000000000000")
            .await
            .is_err_and(
                // NOT_FOUND is the server's answer: the call got through.
                |status| status.code() == tonic::Code::NotFound,
            ),
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_tls_server_serves_tls_clients_and_refuses_plaintext() {
    let pki = Pki::new("test CA");
    let (server, _) = tls_server(&pki, &[]);
    let client = pki::tls_client(server.address(), &pki::credentials(&pki, None))
        .await
        .expect("TLS client connects");
    let task = client
        .start(reins_client::StartTask::new("sleep").params(sleep_params(1, 1)))
        .await
        .expect("StartTask over TLS");
    assert_eq!(
        wait_finished(&client, &task.id).await.state(),
        TaskState::Completed
    );

    let plaintext = Client::connect(server.url()).await;
    let refused = match plaintext {
        Err(_) => true,
        Ok(client) => client.check(&task.id).await.is_err(),
    };
    assert!(
        refused,
        "a plaintext client got an answer from a TLS server"
    );

    let other = Pki::new("another CA");
    assert!(
        !works(server.address(), &pki::credentials(&other, None)).await,
        "a client trusting another CA accepted the server"
    );
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_client_ca() {
    let pki = Pki::new("test CA");
    let ca = pki.ca().to_str().unwrap().to_owned();
    let (server, _) = tls_server(&pki, &["--tls-client-ca", &ca]);
    assert!(
        !works(server.address(), &pki::credentials(&pki, None)).await,
        "a client without a certificate was served"
    );
    let stranger = Pki::new("stranger CA");
    let foreign = stranger.client_uri("foreign", "spiffe://elsewhere/foreign");
    assert!(
        !works(server.address(), &pki::credentials(&pki, Some(&foreign))).await,
        "a client certificate from another CA was accepted"
    );
    let worker = pki.client_uri("worker", "spiffe://cluster.local/ns/agents/sa/research");
    assert!(
        works(server.address(), &pki::credentials(&pki, Some(&worker))).await,
        "a client certificate from the client CA was refused"
    );
}

#[tokio::test]
async fn a_rotated_certificate_is_used_for_new_connections_while_open_streams_go_on() {
    let old_ca = Pki::new("old CA");
    let (server, files) = tls_server(&old_ca, &["--reload-interval", "100ms"]);
    let old = pki::credentials(&old_ca, None);
    let client = pki::tls_client(server.address(), &old)
        .await
        .expect("connect");
    let task = client
        .start(reins_client::StartTask::new("sleep").params(sleep_params(40, 100)))
        .await
        .expect("start");
    let mut events = client
        .watch(&task.id, WatchOptions::default())
        .await
        .expect("watch");
    events.next().await.expect("first event").expect("event");

    let new_ca = Pki::new("new CA");
    new_ca.server("rotated").install_as(&files);
    let new = pki::credentials(&new_ca, None);
    eventually("new connections get the rotated certificate", || async {
        works(server.address(), &new).await.then_some(())
    })
    .await;
    assert!(
        !works(server.address(), &old).await,
        "a new connection still got the old certificate"
    );

    // The stream opened before the rotation goes on to the end of the task, and the old
    // connection still takes calls.
    let mut last = None;
    while let Some(event) = events.next().await {
        last = Some(
            event
                .expect("watch event after the rotation")
                .task
                .expect("task"),
        );
    }
    assert_eq!(last.expect("events").state(), TaskState::Completed);
    client
        .check(&task.id)
        .await
        .expect("a call on the old connection");
    assert!(server.log().contains("reloaded"), "{}", server.log());
}

/// The `reins` CLI over TLS with a token: `--ca-cert`, `--token` and an `https://` server.
#[tokio::test]
async fn the_cli_talks_tls_with_a_ca_and_a_token() {
    use reins_e2e::auth::{AuthFile, sha256_hex};
    let file = AuthFile::new(&format!(
        "[[principal]]\nname = \"alice\"\ntenant = \"acme\"\nroles = [\"operator\"]\ntoken_sha256 = \"{}\"\n",
        sha256_hex("cli-token")
    ));
    let pki = Pki::new("test CA");
    let auth = file.path().to_str().unwrap().to_owned();
    let (server, _) = tls_server(&pki, &["--auth-config", &auth]);
    let url = format!("https://{}", server.address());
    let ca = pki.ca().to_str().unwrap().to_owned();
    let run = |args: Vec<&str>, token: Option<&str>| {
        let mut command = std::process::Command::new(reins_e2e::reins_cli_binary());
        command
            .args(["--server", &url, "--ca-cert", &ca, "--json"])
            .args(args);
        command.env_remove("REINS_SERVER").env_remove("REINS_TOKEN");
        if let Some(token) = token {
            command.env("REINS_TOKEN", token);
        }
        command.output().expect("run reins")
    };
    let started = run(
        vec![
            "start",
            "sleep",
            "--params",
            r#"{"steps": 1, "step_ms": 1}"#,
        ],
        Some("cli-token"),
    );
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let task: serde_json::Value = serde_json::from_slice(&started.stdout).expect("JSON");
    assert_eq!(task["tenant"], "acme");
    assert_eq!(task["createdBy"], "alice");
    let refused = run(vec!["list"], None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("UNAUTHENTICATED"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// A worker principal named by its client certificate's URI SAN (the auth config's
/// `client_cert`): connected over mutual TLS with no token, it serves its kinds and
/// receives its tenant's task; a certificate naming no principal is UNAUTHENTICATED.
#[tokio::test]
async fn a_worker_is_authenticated_by_the_uri_san_of_its_client_certificate() {
    use reins_e2e::auth::{AuthFile, sha256_hex};
    use reins_e2e::worker::hello;
    use reins_proto::v1::worker_command::Command;
    let spiffe = "spiffe://cluster.local/ns/agents/sa/research";
    let file = AuthFile::new(&format!(
        "[[principal]]\nname = \"research-workers\"\ntenant = \"acme\"\nroles = [\"worker\"]\n\
         kinds = [\"research\"]\nclient_cert = \"{spiffe}\"\n\
         [[principal]]\nname = \"alice\"\ntenant = \"acme\"\nroles = [\"operator\"]\ntoken_sha256 = \"{}\"\n",
        sha256_hex("alice-token")
    ));
    let pki = Pki::new("test CA");
    let (auth, ca) = (
        file.path().to_str().unwrap().to_owned(),
        pki.ca().to_str().unwrap().to_owned(),
    );
    let (server, _) = tls_server(
        &pki,
        &[
            "--tls-client-ca",
            &ca,
            "--auth-config",
            &auth,
            "--worker-kind",
            "research",
        ],
    );
    let url = format!("https://{}", server.address());
    let cert = pki.client_uri("research", spiffe);
    let mut worker = reins_e2e::FakeWorker::open_on(
        mtls_channel(&url, &pki, &cert).await,
        None,
        "research",
        vec![hello("research", &["research"], 1)],
    )
    .await
    .expect("the worker is admitted");
    assert!(matches!(worker.next().await, Command::Welcome(_)));

    let caller = pki.client_uri("alice-client", "spiffe://cluster.local/ns/apps/sa/alice");
    let alice = Client::connect_with(
        url.clone(),
        &pki::credentials(&pki, Some(&caller)).token("alice-token"),
    )
    .await
    .expect("alice connects");
    let task = alice
        .start(reins_client::StartTask::new("research"))
        .await
        .expect("start");
    match worker.next().await {
        Command::Assign(assignment) => assert_eq!(assignment.task.expect("task").id, task.id),
        other => panic!("expected the assignment, got {other:?}"),
    }

    let stranger = pki.client_uri("stranger", "spiffe://cluster.local/ns/x/sa/nobody");
    let refused = reins_e2e::FakeWorker::open_on(
        mtls_channel(&url, &pki, &stranger).await,
        None,
        "stranger",
        vec![hello("stranger", &["research"], 1)],
    )
    .await;
    assert_eq!(
        refused.err().map(|status| status.code()),
        Some(tonic::Code::Unauthenticated)
    );
}

async fn mtls_channel(url: &str, pki: &Pki, cert: &pki::CertFiles) -> tonic::transport::Channel {
    reins_client::connect_channel(url.to_owned(), &pki::credentials(pki, Some(cert)))
        .await
        .expect("an mTLS channel")
}
