//! The limits on connections: a server that holds fewer connections than its open-files
//! limit allows, closes those that never send the HTTP/2 preface or stay idle, and keeps
//! serving new clients through a flood of silent connections.

use std::time::Duration;

use reins_client::proto::{ListActiveRequest, TaskState};
use reins_client::{StartTask, WatchOptions};
use reins_e2e::http2::{self, Http2Connection, PREFACE};
use reins_e2e::{FakeWorker, PATIENCE, Reinsd, eventually, long_sleep, sleep_params};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_stream::StreamExt;

/// The case, with the defaults: more silent connections than the server has file
/// descriptors. Old servers stopped accepting, and every new client hung.
#[tokio::test]
async fn calls_succeed_while_more_silent_connections_than_open_files_are_open() {
    // The server raises its soft limit to the hard one and holds at most half of that.
    let server = Reinsd::with_open_files_limit(&[], 64, 256);
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(http2::silent(server.address()).await);
    }

    let calls = async {
        let client = server.client().await;
        client
            .list(ListActiveRequest::default())
            .await
            .expect("ListActive");
        client
            .start(StartTask::new("sleep").params(sleep_params(1, 1)))
            .await
            .expect("StartTask");
    };
    // Well within the handshake timeout (10 s): the silent connections are still open.
    tokio::time::timeout(Duration::from_secs(5), calls)
        .await
        .expect("calls answered while the silent connections are open");

    // The oldest made room for newer connections at once, the others are closed after the
    // handshake timeout.
    for stream in &mut silent {
        http2::wait_closed(stream, PATIENCE).await;
    }
    let log = server.log();
    assert!(log.contains("open_files=256 was=64"), "{log}");
    assert!(log.contains("max_connections: 128"), "{log}");
    assert!(log.contains("to make room for newer ones"), "{log}");
}

#[tokio::test]
async fn a_connection_without_the_preface_is_closed_after_the_handshake_timeout() {
    let server = Reinsd::with_args(&["--handshake-timeout", "1s"]);
    let mut speaking = Http2Connection::open(server.address()).await;
    let start = Instant::now();
    let mut silent = http2::silent(server.address()).await;
    let mut halting = http2::silent(server.address()).await;
    halting.write_all(&PREFACE[..10]).await.expect("write");

    http2::wait_closed(&mut silent, PATIENCE).await;
    http2::wait_closed(&mut halting, PATIENCE).await;
    assert!(start.elapsed() >= Duration::from_secs(1), "closed early");
    // The timeout is the preface's: a connection that sent it is served on.
    assert!(speaking.answers_ping().await);
    let client = server.client().await;
    client
        .list(ListActiveRequest::default())
        .await
        .expect("ListActive");
}

#[tokio::test]
async fn beyond_max_connections_a_new_connection_is_closed_at_once() {
    let server = Reinsd::with_args(&["--max-connections", "3", "--handshake-timeout", "60s"]);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Http2Connection::open(server.address()).await);
    }

    let start = Instant::now();
    let mut refused = http2::silent(server.address()).await;
    http2::wait_closed(&mut refused, PATIENCE).await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "closed after {:?}, not at once",
        start.elapsed()
    );
    for connection in &mut held {
        assert!(
            connection.answers_ping().await,
            "a held connection was closed"
        );
    }
    eventually("the warning", || async {
        server
            .log()
            .contains("refused new connections")
            .then_some(())
    })
    .await;

    // A connection that ends gives its place back.
    drop(held.pop());
    eventually("a place for a new client", || async {
        let client = reins_client::Client::connect(server.url()).await.ok()?;
        client.list(ListActiveRequest::default()).await.ok()
    })
    .await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_but_one_with_an_open_watch_is_not() {
    let idle_timeout = Duration::from_secs(2);
    let server = Reinsd::with_args(&["--idle-timeout", "2s", "--keepalive-interval", "300ms"]);
    let task = server
        .client()
        .await
        .start(long_sleep())
        .await
        .expect("start");
    let watcher = server.client().await;
    let mut events = watcher
        .watch(&task.id, WatchOptions::default())
        .await
        .expect("watch");
    events.next().await.expect("first event").expect("event");

    // PINGs, the server's and its own, do not keep a connection without calls open.
    let start = Instant::now();
    let mut idle = Http2Connection::open(server.address()).await;
    let goaway = idle.ping_until_closed(Duration::from_millis(200)).await;
    assert!(!goaway, "an idle connection is closed without a GOAWAY");
    assert!(start.elapsed() >= idle_timeout, "closed early");

    // The watch, open for longer than that, still delivers.
    server
        .client()
        .await
        .hard_cancel(&task.id, "enough")
        .await
        .expect("hard cancel");
    let last = tokio::time::timeout(PATIENCE, async {
        let mut last = None;
        while let Some(event) = events.next().await {
            last = event.expect("watch event").task;
        }
        last.expect("a last event")
    })
    .await
    .expect("the watch ends");
    assert_eq!(last.state(), TaskState::Cancelled);
}

#[tokio::test]
async fn keepalive_flags_set_the_pings_and_the_workers_heartbeat() {
    let server = Reinsd::with_args(&[
        "--keepalive-interval",
        "500ms",
        "--keepalive-timeout",
        "500ms",
    ]);
    let worker = FakeWorker::connect(&server.url(), "w", &["research"], 1).await;
    let welcome = worker.welcome.as_ref().expect("welcome");
    let heartbeat = welcome.heartbeat_interval.expect("a heartbeat interval");
    assert_eq!(
        Duration::try_from(heartbeat).unwrap(),
        Duration::from_millis(500)
    );

    // A connection that does not answer the pings is dropped after interval + timeout.
    let mut deaf = Http2Connection::open(server.address()).await;
    let start = Instant::now();
    deaf.ignore_until_closed().await;
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "closed early"
    );
}

#[tokio::test]
async fn past_max_connection_age_a_goaway_then_the_grace_then_the_end() {
    let (age, grace) = (Duration::from_secs(1), Duration::from_secs(1));
    let server = Reinsd::with_args(&[
        "--max-connection-age",
        "1s",
        "--max-connection-age-grace",
        "1s",
    ]);
    let task = server
        .client()
        .await
        .start(long_sleep())
        .await
        .expect("start");
    // Before the watcher connects: its connection's age counts from then.
    let start = Instant::now();
    let watcher = server.client().await;
    let mut events = watcher
        .watch(&task.id, WatchOptions::default())
        .await
        .expect("watch");

    // Without calls, the connection ends right after its GOAWAY.
    let mut idle = Http2Connection::open(server.address()).await;
    assert!(
        idle.ping_until_closed(Duration::from_millis(200)).await,
        "no GOAWAY"
    );
    assert!(start.elapsed() >= age);

    // The watch goes on through the grace, then its connection is closed.
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Some(event) = events.next().await {
            if let Err(status) = event {
                return status;
            }
        }
        panic!("the watch ended without an error");
    })
    .await
    .expect("the watch's connection closed");
    assert!(
        start.elapsed() >= age + grace,
        "cut after {:?}: {ended:?}",
        start.elapsed()
    );
    // The client reconnects for its next call.
    eventually("a call on a new connection", || async {
        watcher.list(ListActiveRequest::default()).await.ok()
    })
    .await;
}
