//! Redis with a password and over TLS: `requirepass` with the password in the URL or in
//! `REINS_REDIS_PASSWORD_FILE` (never in the log), and a TLS redis-server (`--tls-port`)
//! reached with `rediss://` and `--redis-ca`.

use reins_client::StartTask;
use reins_client::proto::TaskState;
use reins_e2e::pki::Pki;
use reins_e2e::{RedisServer, Reinsd, sleep_params, wait_finished};
use tonic::Code;

const PASSWORD: &str = "s3cret-pass-7f1e";

fn sleep() -> StartTask {
    StartTask::new("sleep").params(sleep_params(1, 1))
}

async fn runs_a_task(server: &Reinsd) {
    let client = server.client().await;
    let task = client.start(sleep()).await.expect("StartTask on Redis");
    assert_eq!(
        wait_finished(&client, &task.id).await.state(),
        TaskState::Completed
    );
}

#[tokio::test]
async fn a_redis_password_comes_from_the_url_or_a_file_and_is_never_logged() {
    let redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    let port = redis.port();
    let in_url = format!("redis://:{PASSWORD}@127.0.0.1:{port}");
    let server = Reinsd::with_args(&["--redis-url", &in_url]);
    runs_a_task(&server).await;
    assert!(!server.log().contains(PASSWORD), "{}", server.log());
    assert!(server.log().contains(":***@127.0.0.1"), "{}", server.log());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let plain = format!("redis://127.0.0.1:{port}");
    let from_file = Reinsd::with_args(&[
        "--redis-url",
        &plain,
        "--redis-password-file",
        file.to_str().unwrap(),
    ]);
    runs_a_task(&from_file).await;

    let wrong = format!("redis://:not-{PASSWORD}@127.0.0.1:{port}");
    let refused = Reinsd::with_args(&["--redis-url", &wrong]);
    let status = refused.client().await.start(sleep()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(!status.message().contains(PASSWORD), "{status:?}");
    assert!(!refused.log().contains(PASSWORD), "{}", refused.log());
}

#[tokio::test]
async fn a_tls_redis_is_reached_with_rediss_and_its_ca() {
    let pki = Pki::new("redis CA");
    let files = pki.server("redis");
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
        .to_string();
    let (cert, key, ca) = (
        files.cert.to_str().unwrap().to_owned(),
        files.key.to_str().unwrap().to_owned(),
        pki.ca().to_str().unwrap().to_owned(),
    );
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let server = Reinsd::with_args(&["--redis-url", &url, "--redis-ca", &ca]);
    runs_a_task(&server).await;

    let untrusted = Reinsd::with_args(&["--redis-url", &url]);
    let status = untrusted.client().await.start(sleep()).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "a Redis certificate from an unknown CA was accepted"
    );
    drop(redis);
}
