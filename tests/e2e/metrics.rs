//! Metrics and readiness (`--metrics-listen`): a real Prometheus scraping two replicas on
//! Redis counts a known workload exactly, computes the cancel-stop p99 and accepts every
//! query of the Grafana dashboard; `promtool` finds nothing wrong with a scrape; every
//! metric the dashboard queries is exported; OpenMetrics when asked; the gRPC metrics of
//! unary calls and streams; the worker gauges; `/readyz` and gRPC health follow a Redis
//! outage, `/healthz` does not.

use std::collections::BTreeSet;
use std::time::Duration;

use reins_client::Client;
use reins_client::proto::TaskState;
use reins_e2e::prometheus::{self, Prometheus, get};
use reins_e2e::{
    FakeWorker, RedisServer, Reinsd, eventually, free_port, long_sleep, start_sleep, started,
    stuck_sleep, wait_finished,
};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const TASK_SERVICE: &str = "reins.v1.TaskService";
/// Prometheus's scrape (and evaluation) interval in these tests.
const SCRAPE_EVERY: Duration = Duration::from_millis(500);
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/reins.json");

/// A replica that serves metrics; returns it with its metrics address once that answers
/// (it is bound after the gRPC address is announced).
async fn replica(args: &[&str]) -> (Reinsd, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut all = vec!["--metrics-listen", &metrics];
    all.extend_from_slice(args);
    let server = Reinsd::with_args(&all);
    eventually("the metrics endpoint", || async {
        get(&metrics, "/healthz", None)
            .await
            .filter(|answer| answer.status == 200)
    })
    .await;
    (server, metrics)
}

/// Replica `id` of a deployment on `redis`, serving metrics.
async fn replica_on(redis: &RedisServer, id: &str, args: &[&str]) -> (Reinsd, String) {
    let url = redis.url();
    let mut all = vec!["--redis-url", &url, "--replica-id", id];
    all.extend_from_slice(args);
    replica(&all).await
}

async fn scrape(metrics: &str) -> String {
    let answer = get(metrics, "/metrics", None).await.expect("scrape");
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body
}

/// Starts a long task on `start`, waits until it runs, soft- or hard-cancels it through
/// `cancel`, and waits until it is CANCELLED. Returns whether it was escalated.
async fn cancelled(
    start: &Client,
    cancel: &Client,
    task: reins_client::StartTask,
    hard: bool,
    grace: Duration,
) -> bool {
    let task = started(start, start.start(task).await.expect("start")).await;
    if hard {
        cancel
            .hard_cancel(&task.id, "metrics test")
            .await
            .expect("hard cancel");
    } else {
        cancel
            .soft_cancel(&task.id, "metrics test", Some(grace))
            .await
            .expect("soft cancel");
    }
    let done = wait_finished(start, &task.id).await;
    assert_eq!(done.state(), TaskState::Cancelled);
    done.cancel.expect("cancel info").escalated
}

/// The expressions of every panel of the dashboard, with Grafana's variables replaced by
/// what a query of the last minute would use.
fn dashboard_queries() -> Vec<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("read the dashboard"))
            .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries: Vec<String> = panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_owned))
        .map(|expr| {
            expr.replace("$__rate_interval", "1m")
                .replace("$__interval", "1m")
                .replace("$instance", ".*")
                .replace("$job", ".*")
        })
        .collect();
    assert!(
        queries.len() >= 7,
        "the dashboard has its panels: {queries:?}"
    );
    queries
}

/// The Reins and gRPC metric names a PromQL expression reads (histogram series named by
/// their family).
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|token| token.starts_with("reins_") || token.starts_with("grpc_server_"))
        .map(|token| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| token.strip_suffix(suffix))
                .unwrap_or(token)
                .to_owned()
        })
        .collect()
}

/// The metric families of a scrape, from its `# TYPE` lines.
fn exported_families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn prometheus_counts_a_known_workload_across_two_replicas() {
    let Some(binary) = prometheus::binary("prometheus") else {
        return;
    };
    let redis = RedisServer::start();
    let (a, a_metrics) = replica_on(&redis, "a", &[]).await;
    let (b, b_metrics) = replica_on(&redis, "b", &[]).await;
    let prometheus = Prometheus::start(&binary, &[a_metrics, b_metrics], SCRAPE_EVERY).await;
    prometheus.wait_value("count(up == 1)", 2.0).await;
    let (a, b) = (a.client().await, b.client().await);

    const COMPLETED: usize = 5;
    const SOFT: usize = 3;
    const HARD: usize = 2;
    let mut tasks = Vec::new();
    for i in 0..COMPLETED {
        let client = if i % 2 == 0 { &a } else { &b };
        tasks.push((client, start_sleep(client, 2, 10).await));
    }
    for (client, task) in tasks {
        assert_eq!(
            wait_finished(client, &task.id).await.state(),
            TaskState::Completed
        );
    }
    // Each replica has started a task of the kind, so its stop series exist at 0 (soft and
    // hard): once Prometheus has them, the stops below are a rate.
    prometheus
        .wait_value("count(reins_cancel_stop_seconds_count)", 4.0)
        .await;
    assert!(!cancelled(&a, &b, long_sleep(), true, Duration::ZERO).await);
    for i in 0..SOFT {
        let (start, cancel) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let grace = Duration::from_secs(20);
        assert!(!cancelled(start, cancel, long_sleep(), false, grace).await);
    }
    assert!(!cancelled(&b, &a, long_sleep(), true, Duration::ZERO).await);
    let grace = Duration::from_millis(300);
    assert!(
        cancelled(&a, &b, stuck_sleep(), false, grace).await,
        "escalated"
    );

    let all = (COMPLETED + SOFT + HARD + 1) as f64;
    let cancelled_count = (SOFT + HARD + 1) as f64;
    for (query, expected) in [
        ("sum(reins_tasks_started_total)", all),
        (
            r#"sum(reins_tasks_finished_total{state="completed"})"#,
            COMPLETED as f64,
        ),
        (
            r#"sum(reins_tasks_finished_total{state="cancelled"})"#,
            cancelled_count,
        ),
        (
            r#"sum(reins_cancels_total{mode="soft",outcome="requested"})"#,
            (SOFT + 1) as f64,
        ),
        (
            r#"sum(reins_cancels_total{mode="hard",outcome="cancelled"})"#,
            HARD as f64,
        ),
        ("sum(reins_cancel_escalations_total)", 1.0),
        ("sum(reins_cancel_stop_seconds_count)", cancelled_count),
        (
            r#"sum(reins_cancel_stop_seconds_count{mode="hard"})"#,
            HARD as f64,
        ),
        (
            r#"sum(grpc_server_handled_total{grpc_method="StartTask",grpc_code="OK"})"#,
            all,
        ),
        ("sum(reins_tasks_running)", 0.0),
        ("count(reins_build_info)", 2.0),
    ] {
        prometheus.wait_value(query, expected).await;
    }
    let p99 = "histogram_quantile(0.99, sum by (le) (rate(reins_cancel_stop_seconds_bucket[1m])))";
    let p99 = eventually("a cancel-stop p99", || async {
        prometheus
            .value(p99)
            .await
            .filter(|value| value.is_finite())
    })
    .await;
    assert!(p99 > 0.0, "p99 {p99}");
    // Every panel of the dashboard is a query Prometheus accepts.
    for query in dashboard_queries() {
        if let Err(error) = prometheus.query(&query).await {
            panic!("the dashboard's query {query} fails: {error}");
        }
    }
}

#[tokio::test]
async fn promtool_finds_no_problem_in_a_scrape() {
    let Some(promtool) = prometheus::binary("promtool") else {
        return;
    };
    let (server, metrics) = replica(&[]).await;
    let client = server.client().await;
    let done = start_sleep(&client, 1, 5).await;
    wait_finished(&client, &done.id).await;
    assert!(!cancelled(&client, &client, long_sleep(), true, Duration::ZERO).await);
    let exposition = scrape(&metrics).await;
    assert!(
        exposition.contains("reins_cancel_stop_seconds_bucket{"),
        "{exposition}"
    );
    let (clean, report) = prometheus::promtool_check_metrics(&promtool, &exposition);
    assert!(
        clean && report.trim().is_empty(),
        "promtool check metrics: {report}"
    );
}

#[tokio::test]
async fn the_metrics_endpoint_speaks_openmetrics_when_asked() {
    let (_server, metrics) = replica(&[]).await;
    let openmetrics = get(
        &metrics,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )
    .await
    .expect("scrape");
    assert!(
        openmetrics.body.ends_with("# EOF\n"),
        "{}",
        openmetrics.body
    );
    assert!(!scrape(&metrics).await.contains("# EOF"));
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let (server, metrics) = replica(&[]).await;
    let client = server.client().await;
    let done = start_sleep(&client, 1, 5).await;
    wait_finished(&client, &done.id).await;
    // The worker gauges have series only while workers are connected.
    let _worker = FakeWorker::connect(&server.url(), "metrics", &["render"], 2).await;
    let exported = exported_families(&scrape(&metrics).await);
    let queried: BTreeSet<String> = dashboard_queries()
        .iter()
        .flat_map(|query| metric_names(query))
        .collect();
    for wanted in [
        "reins_cancel_stop_seconds",
        "reins_dispatch_seconds",
        "reins_tasks_finished_total",
        "reins_queue_depth",
        "reins_cancel_escalations_total",
        "reins_store_errors_total",
        "reins_tasks_running",
    ] {
        assert!(
            queried.contains(wanted),
            "the dashboard shows {wanted}: {queried:?}"
        );
    }
    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
}

async fn health(channel: &Channel, service: &str) -> Option<ServingStatus> {
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let response = HealthClient::new(channel.clone())
        .check(request)
        .await
        .ok()?;
    Some(response.into_inner().status())
}

/// `/readyz` and gRPC health for `""` and the task service all say `ready`.
async fn wait_ready(channel: &Channel, metrics: &str, ready: bool) {
    let (code, status) = if ready {
        (200, ServingStatus::Serving)
    } else {
        (503, ServingStatus::NotServing)
    };
    eventually(&format!("ready = {ready}"), || async {
        let readyz = get(metrics, "/readyz", None).await?;
        let overall = health(channel, "").await?;
        let task_service = health(channel, TASK_SERVICE).await?;
        (readyz.status == code && overall == status && task_service == status).then_some(())
    })
    .await;
}

#[tokio::test]
async fn readiness_follows_a_redis_outage_and_liveness_does_not() {
    let mut redis = RedisServer::start();
    // Renewed every 500 ms: the replica notices the outage and the recovery quickly.
    let (server, metrics) = replica_on(&redis, "a", &["--lease-ttl", "1500ms"]).await;
    let channel = Channel::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    wait_ready(&channel, &metrics, true).await;

    redis.stop();
    wait_ready(&channel, &metrics, false).await;
    let healthz = get(&metrics, "/healthz", None).await.expect("/healthz");
    assert_eq!(healthz.status, 200, "liveness does not depend on Redis");

    redis.restart();
    wait_ready(&channel, &metrics, true).await;
    let depth = scrape(&metrics).await;
    assert!(
        depth.contains("reins_store_errors_total{op=\"renew_lease\",kind=\"unavailable\"}"),
        "the outage is counted: {depth}"
    );
}

/// The value of the sample `series` (name and labels, as exposed) in a scrape.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn worker_gauges_follow_connected_workers_and_their_slots() {
    let (server, metrics) = replica(&[]).await;
    let mut worker = FakeWorker::connect(&server.url(), "metrics", &["render"], 2).await;
    let client = server.client().await;
    client
        .start(reins_client::StartTask::new("render"))
        .await
        .expect("start a worker task");
    worker.expect_assign().await;
    let exposition = scrape(&metrics).await;
    for (series, expected) in [
        (r#"reins_workers_connected{kind="render"}"#, 1.0),
        (r#"reins_worker_slots{kind="render",state="used"}"#, 1.0),
        (r#"reins_worker_slots{kind="render",state="free"}"#, 1.0),
        (r#"reins_tasks_running{kind="render"}"#, 1.0),
    ] {
        assert_eq!(
            sample(&exposition, series),
            Some(expected),
            "{series}: {exposition}"
        );
    }
    drop(worker);
    eventually("the worker's series to go", || async {
        let exposition = scrape(&metrics).await;
        let gone = sample(&exposition, r#"reins_workers_connected{kind="render"}"#).is_none()
            && sample(&exposition, r#"reins_tasks_running{kind="render"}"#) == Some(0.0);
        gone.then_some(())
    })
    .await;
}

#[tokio::test]
async fn grpc_metrics_count_unary_calls_and_streams_with_their_codes() {
    let (server, metrics) = replica(&[]).await;
    let client = server.client().await;
    let task = start_sleep(&client, 3, 10).await;
    // A watch from the first version to the terminal one: a server stream, one message in.
    let mut events = client
        .watch(&task.id, reins_client::WatchOptions::default())
        .await
        .expect("watch");
    let mut received = 0;
    while let Some(event) = tokio_stream::StreamExt::next(&mut events).await {
        event.expect("watch event");
        received += 1;
    }
    let nowhere = "01890000-0000-7000-8000-000000000000";
    let missing = client.check(nowhere).await.expect_err("no such task");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let method = |name: &str, kind: &str| {
        format!(r#"grpc_service="reins.v1.TaskService",grpc_method="{name}",grpc_type="{kind}""#)
    };
    let watch = method("WatchTask", "server_stream");
    let expected = [
        (format!("grpc_server_started_total{{{watch}}}"), 1.0),
        (format!("grpc_server_msg_received_total{{{watch}}}"), 1.0),
        (
            format!("grpc_server_msg_sent_total{{{watch}}}"),
            received as f64,
        ),
        (
            format!(r#"grpc_server_handled_total{{{watch},grpc_code="OK"}}"#),
            1.0,
        ),
        (
            format!(
                r#"grpc_server_handled_total{{{},grpc_code="OK"}}"#,
                method("StartTask", "unary")
            ),
            1.0,
        ),
        (
            format!(
                r#"grpc_server_handled_total{{{},grpc_code="NotFound"}}"#,
                method("CheckTask", "unary")
            ),
            1.0,
        ),
        (
            format!(
                "grpc_server_handling_seconds_count{{{}}}",
                method("CheckTask", "unary")
            ),
            1.0,
        ),
    ];
    // The watch is handled when its trailers go out, which may follow the last event.
    let (handled_watch, _) = &expected[3];
    eventually("the watch to be handled", || async {
        sample(&scrape(&metrics).await, handled_watch).map(drop)
    })
    .await;
    let exposition = scrape(&metrics).await;
    for (series, value) in &expected {
        assert_eq!(sample(&exposition, series), Some(*value), "{series}");
    }
    assert!(
        received >= 2,
        "the watch saw the task's versions: {received}"
    );
}
