//! Tenant quotas from the auth config's `[[tenant]]`: `max_active_tasks` (cluster-wide: two
//! replicas share one cap), `max_starts_per_second` with `burst` (RESOURCE_EXHAUSTED with
//! QuotaFailure and RetryInfo), and `exec` narrowing `--allow-exec`. Tenants not listed
//! have no quotas.

use reins_client::StartTask;
use reins_e2e::auth::{AuthFile, client_with_token, sha256_hex};
use reins_e2e::{Cluster, Reinsd, long_sleep, reason};
use tonic::Code;
use tonic_types::StatusExt;

use crate::auth::principals;

fn config() -> String {
    format!(
        "{}\n[[principal]]\nname = \"rita\"\ntenant = \"rated\"\nroles = [\"operator\"]\ntoken_sha256 = \"{}\"\n\
         [[tenant]]\nname = \"acme\"\nmax_active_tasks = 2\nexec = [\"date\"]\n\
         [[tenant]]\nname = \"globex\"\nmax_watchers = 1\nmax_workers = 1\n\
         [[tenant]]\nname = \"rated\"\nmax_starts_per_second = 0.2\nburst = 2\n",
        principals(),
        sha256_hex("rita-token")
    )
}

fn args(file: &AuthFile) -> Vec<String> {
    vec![
        "--auth-config".into(),
        file.path().to_str().unwrap().to_owned(),
    ]
}

fn assert_quota(status: &tonic::Status, quota: &str, retry: bool) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(status), "QUOTA_EXCEEDED");
    let details = status.get_error_details();
    let failure = details.quota_failure().expect("QuotaFailure");
    assert!(
        failure.violations[0].description.contains(quota),
        "{failure:?}"
    );
    assert_eq!(details.retry_info().is_some(), retry, "{details:?}");
}

#[tokio::test]
async fn the_active_task_cap_holds_across_replicas_and_frees_with_a_finished_task() {
    let file = AuthFile::new(&config());
    let args = args(&file);
    let cluster = Cluster::start(2, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let a = client_with_token(&cluster.replica(0).url(), "alice-token").await;
    let b = client_with_token(&cluster.replica(1).url(), "alice-token").await;
    let first = a.start(long_sleep()).await.expect("first");
    b.start(long_sleep())
        .await
        .expect("second, through the other replica");
    let refused = a.start(long_sleep()).await.unwrap_err();
    assert_quota(&refused, "max_active_tasks", false);
    assert!(
        refused
            .get_error_details()
            .quota_failure()
            .unwrap()
            .violations[0]
            .subject
            == "tenant:acme"
    );
    // Another tenant has no quota.
    let bob = client_with_token(&cluster.replica(0).url(), "bob-token").await;
    for _ in 0..3 {
        bob.start(long_sleep()).await.expect("globex is not capped");
    }
    a.hard_cancel(&first.id, "make room").await.expect("cancel");
    b.start(long_sleep())
        .await
        .expect("a place freed by the finished task");
}

#[tokio::test]
async fn starts_beyond_the_rate_and_burst_are_refused_with_when_to_retry() {
    let file = AuthFile::new(&config());
    let args = args(&file);
    let server = Reinsd::with_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let rita = client_with_token(&server.url(), "rita-token").await;
    let sleep = || StartTask::new("sleep").params(reins_e2e::sleep_params(1, 1));
    rita.start(sleep()).await.expect("burst 1");
    rita.start(sleep()).await.expect("burst 2");
    let refused = rita.start(sleep()).await.unwrap_err();
    assert_quota(&refused, "max_starts_per_second", true);
    let delay = refused
        .get_error_details()
        .retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a retry delay");
    assert!(
        delay > std::time::Duration::ZERO && delay <= std::time::Duration::from_secs(5),
        "{delay:?}"
    );
}

#[tokio::test]
async fn a_tenants_exec_list_narrows_allow_exec() {
    let file = AuthFile::new(&config());
    let mut args = args(&file);
    args.extend(["--allow-exec".into(), "sh,date".into()]);
    let server = Reinsd::with_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let alice = client_with_token(&server.url(), "alice-token").await;
    let exec = |argv: serde_json::Value| {
        StartTask::new("exec").params(serde_json::json!({ "argv": argv }))
    };
    let refused = alice
        .start(exec(serde_json::json!(["sh", "-c", "true"])))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::PermissionDenied, "EXEC_NOT_ALLOWED")
    );
    alice
        .start(exec(serde_json::json!(["date"])))
        .await
        .expect("date is on acme's list");
    let bob = client_with_token(&server.url(), "bob-token").await;
    bob.start(exec(serde_json::json!(["sh", "-c", "true"])))
        .await
        .expect("globex has no exec list");
}

/// globex may hold one watch and one worker across the cluster: a second one, on the
/// other replica, is refused until the first is gone.
#[tokio::test]
async fn watchers_and_workers_are_counted_across_replicas() {
    let file = AuthFile::new(&config());
    let mut args = args(&file);
    args.extend(["--worker-kind".into(), "research".into()]);
    let cluster = Cluster::start(2, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let (a, b) = (cluster.replica(0).url(), cluster.replica(1).url());
    let bob_a = client_with_token(&a, "bob-token").await;
    let bob_b = client_with_token(&b, "bob-token").await;
    let task = bob_a.start(long_sleep()).await.expect("start");
    let first = bob_a
        .watch(&task.id, reins_client::WatchOptions::default())
        .await
        .expect("the first watch");
    let refused = match bob_b
        .watch(&task.id, reins_client::WatchOptions::default())
        .await
    {
        Err(status) => status,
        Ok(_) => panic!("a second watch was allowed"),
    };
    assert_quota(&refused, "max_watchers", false);
    drop(first);
    reins_e2e::eventually("the first watch's place is free", || async {
        bob_b
            .watch(&task.id, reins_client::WatchOptions::default())
            .await
            .ok()
            .map(drop)
    })
    .await;

    let worker =
        reins_e2e::FakeWorker::connect_as(&a, Some("globex-worker-token"), "w1", &["research"], 1)
            .await;
    let second = reins_e2e::FakeWorker::open_as(
        &b,
        Some("globex-worker-token"),
        "w2",
        vec![reins_e2e::worker::hello("w2", &["research"], 1)],
    )
    .await;
    let refused = second.err().expect("a second worker was allowed");
    assert_quota(&refused, "max_workers", false);
    drop(worker);
    reins_e2e::eventually("the first worker's place is free", || async {
        reins_e2e::FakeWorker::open_as(
            &b,
            Some("globex-worker-token"),
            "w3",
            vec![reins_e2e::worker::hello("w3", &["research"], 1)],
        )
        .await
        .ok()
    })
    .await;
}
