//! The Redis store against a real `redis-server` started for each test: the store
//! conformance suite, then what only Redis has (leases, key expiry, prefixes, outages).

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reins_e2e::RedisServer;

use super::*;
use crate::store::history::HISTORY_LEN;
use crate::store::{ActiveFilter, TaskRecords, TaskStore, Update, conformance};
use crate::task::NewTask;

const RETENTION: Duration = Duration::from_secs(3600);

/// A store and the server behind it, which lives as long as the store.
struct Fixture {
    store: Arc<RedisStore>,
    server: RedisServer,
    /// Runs the store's pub/sub watchdog while the fixture lives.
    _background: Background,
}

impl Deref for Fixture {
    type Target = dyn TaskStore;

    fn deref(&self) -> &(dyn TaskStore + 'static) {
        self.store.as_ref()
    }
}

fn fixture_with(server: RedisServer, prefix: &str) -> Fixture {
    let background = Background::new();
    let store =
        RedisStore::connect(&server.url(), prefix, RETENTION, &background).expect("connect");
    Fixture {
        store: Arc::new(store),
        server,
        _background: background,
    }
}

fn fixture() -> Fixture {
    fixture_with(RedisServer::start(), "reins:")
}

conformance::suite!(fixture());

async fn raw_connection(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_replica_whose_lease_lapses_is_lost_until_it_renews() {
    let fixture = fixture();
    let (active, _) = conformance::one_active_one_finished_owned_by(&*fixture, "replica-a").await;
    fixture
        .renew_lease("replica-a", Duration::from_millis(100))
        .await
        .unwrap();
    assert!(fixture.lost_owners().await.unwrap().is_empty());

    let lost = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let lost = fixture.lost_owners().await.unwrap();
            if !lost.is_empty() {
                return lost;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the lease lapses");
    assert_eq!(lost, vec!["replica-a".to_owned()]);
    assert_eq!(fixture.owned_by("replica-a").await.unwrap()[0].id, active);

    assert!(
        !fixture
            .renew_lease("replica-a", Duration::from_secs(30))
            .await
            .unwrap(),
        "it had lapsed"
    );
    assert!(fixture.lost_owners().await.unwrap().is_empty());
}

#[tokio::test]
async fn finished_tasks_expire_after_retention_with_their_history() {
    let server = RedisServer::start();
    let store = RedisStore::connect(
        &server.url(),
        "reins:",
        Duration::from_secs(60),
        &Background::new(),
    )
    .unwrap();
    let (active, finished) = conformance::one_active_one_finished(&store).await;
    let mut redis = raw_connection(&server).await;
    for key in [store.keys.task(finished), store.keys.history(finished)] {
        let ttl: i64 = redis.pttl(&key).await.unwrap();
        assert!(
            (1..=60_000).contains(&ttl),
            "{key} expires within the retention, ttl {ttl}"
        );
    }
    let ttl: i64 = redis.pttl(store.keys.task(active)).await.unwrap();
    assert_eq!(ttl, -1, "an active task does not expire");
}

/// A version costs the same whatever the number of checkpoints: the hash and the history
/// hold the record without them; they live in their own list, which expires with the task.
#[tokio::test]
async fn checkpoints_live_in_their_own_list_not_in_every_version() {
    let fixture = fixture();
    let store = &fixture.store;
    let (active, _) = conformance::one_active_one_finished(&*fixture).await;
    let running = fixture.get(active).await.unwrap().unwrap();
    let limits = crate::task::CheckpointLimits {
        max_count: 500,
        max_bytes: 1 << 20,
    };
    let task = conformance::checkpoints_within(&*fixture, &running, 300, limits).await;
    let mut redis = raw_connection(&fixture.server).await;
    let json: String = redis.hget(store.keys.task(active), "json").await.unwrap();
    assert!(
        json.contains(r#""partial_results":[]"#),
        "the record holds no checkpoint: {json}"
    );
    let history: Vec<String> = redis
        .lrange(store.keys.history(active), 0, -1)
        .await
        .unwrap();
    assert_eq!(history.len(), HISTORY_LEN);
    assert!(
        history
            .iter()
            .all(|entry| entry.contains(r#""partial_results":[]"#))
    );
    let longest = history.iter().map(String::len).max().unwrap();
    assert!(longest < 2048, "a history entry of {longest} bytes");
    let list: Vec<String> = redis
        .lrange(store.keys.checkpoints(active), 0, -1)
        .await
        .unwrap();
    assert_eq!(list.len(), 300);

    let read = fixture.get(active).await.unwrap().unwrap();
    assert_eq!(read, task, "reads put them back");
    let replay = fixture
        .history(active, task.version - 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replay.last(), Some(&task));
    assert_eq!(
        replay[0].partial_results.values().len(),
        298,
        "each version its own"
    );

    let done = conformance::complete_as_owner(&*fixture, &read).await;
    let ttl: i64 = redis.pttl(store.keys.checkpoints(done.id)).await.unwrap();
    assert!(
        (1..=RETENTION.as_millis() as i64).contains(&ttl),
        "ttl {ttl}"
    );
}

#[tokio::test]
async fn every_key_is_under_the_prefix() {
    let fixture = fixture_with(RedisServer::start(), "deployment-7:");
    conformance::one_active_one_finished(&*fixture).await;
    fixture
        .renew_lease("replica-a", Duration::from_secs(30))
        .await
        .unwrap();
    let keys: Vec<String> = raw_connection(&fixture.server)
        .await
        .keys("*")
        .await
        .unwrap();
    assert!(!keys.is_empty());
    assert!(
        keys.iter().all(|key| key.starts_with("deployment-7:")),
        "{keys:?}"
    );
}

#[tokio::test]
async fn two_prefixes_share_a_redis_without_seeing_each_other() {
    let server = RedisServer::start();
    let blue = RedisStore::connect(&server.url(), "blue:", RETENTION, &Background::new()).unwrap();
    let green =
        RedisStore::connect(&server.url(), "green:", RETENTION, &Background::new()).unwrap();
    let (active, _) = conformance::one_active_one_finished(&blue).await;
    assert!(green.get(active).await.unwrap().is_none());
    let everything = ActiveFilter::default();
    assert!(
        green
            .list_active(&everything, None, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        blue.list_active(&everything, None, 100)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn an_outage_fails_calls_fast_and_the_store_recovers_by_itself() {
    let mut fixture = fixture_with(RedisServer::start_with_aof(), "reins:");
    let (active, _) = conformance::one_active_one_finished(&*fixture).await;
    let mut changes = fixture.subscribe(active).await.unwrap();

    fixture.server.stop();
    // Bounded: the call fails (UNAVAILABLE), it does not hang.
    let during = tokio::time::timeout(RESPONSE_TIMEOUT * 5, fixture.get(active)).await;
    assert!(
        matches!(during, Ok(Err(StoreError::Unavailable(_)))),
        "{during:?}"
    );

    fixture.server.restart();
    let recovered = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(Some(task)) = fixture.get(active).await {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the store reconnects");
    assert_eq!(recovered.id, active, "nothing acknowledged was lost (AOF)");

    // The subscription was told it may have missed changes, and follows again.
    let told = tokio::time::timeout(Duration::from_secs(10), changes.next())
        .await
        .unwrap();
    assert!(matches!(told, Some(Update::Lagged)), "{told:?}");
    let next = conformance::complete_as_owner(&*fixture, &recovered).await;
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match changes.next().await {
                Some(Update::Changed(task)) => return task,
                Some(Update::Lagged) => continue,
                None => panic!("the subscription ended"),
            }
        }
    })
    .await
    .expect("the resubscribed channel delivers");
    assert_eq!(seen.version, next.version);
}

/// How many connections are subscribed to `channel`.
async fn subscribers_of(server: &RedisServer, channel: &str) -> u64 {
    let (_, count): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut raw_connection(server).await)
        .await
        .unwrap();
    count
}

/// The local subscribers of a task share one Redis subscription: it stays, live, while any
/// of them is left, and goes when the last one leaves.
#[tokio::test]
async fn the_last_local_subscriber_of_a_task_to_leave_unsubscribes_it() {
    let fixture = fixture();
    let id = crate::task::TaskId::now_v7();
    let channel = format!("reins:events:task:{id}");
    let mut subscribers = Vec::new();
    for _ in 0..100 {
        subscribers.push(fixture.subscribe(id).await.unwrap());
    }
    assert_eq!(subscribers_of(&fixture.server, &channel).await, 1);
    let mut last = subscribers.pop().unwrap();
    drop(subscribers);
    // Still subscribed: a message the store cannot decode reaches the one left as a lag.
    let _: u64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg("not a task")
        .query_async(&mut raw_connection(&fixture.server).await)
        .await
        .unwrap();
    let told = tokio::time::timeout(Duration::from_secs(10), last.next()).await;
    assert!(matches!(told, Ok(Some(Update::Lagged))), "{told:?}");
    assert_eq!(subscribers_of(&fixture.server, &channel).await, 1);
    drop(last);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while subscribers_of(&fixture.server, &channel).await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "still subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How many times Redis has run `command` since the last `CONFIG RESETSTAT`.
async fn calls_of(server: &RedisServer, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut raw_connection(server).await)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

#[tokio::test]
async fn a_selective_filter_reads_only_the_tasks_it_can_match() {
    let fixture = fixture();
    for _ in 0..300 {
        fixture
            .create(conformance::new_task(NewTask {
                kind: "bulk".into(),
                ..NewTask::default()
            }))
            .await
            .unwrap();
    }
    let rare = conformance::new_task(NewTask {
        kind: "rare".into(),
        session_id: "s-rare".into(),
        ..NewTask::default()
    });
    fixture.create(rare.clone()).await.unwrap();
    let by = |kind: Option<&str>, session: Option<&str>| ActiveFilter {
        kind: kind.map(str::to_owned),
        session_id: session.map(str::to_owned),
        ..ActiveFilter::default()
    };
    for (filter, expected) in [
        (by(Some("rare"), None), vec![rare.id]),
        (by(None, Some("s-rare")), vec![rare.id]),
        (by(Some("bulk"), Some("s-rare")), vec![]),
        (by(Some("nothing"), None), vec![]),
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut raw_connection(&fixture.server).await)
            .await
            .unwrap();
        let found = fixture.list_active(&filter, None, 100).await.unwrap();
        assert_eq!(found.iter().map(|t| t.id).collect::<Vec<_>>(), expected);
        let reads = calls_of(&fixture.server, "hget").await;
        assert!(
            reads <= 1,
            "{filter:?} read {reads} records; it may match at most one"
        );
    }
}

#[test]
fn passwords_are_redacted_from_urls() {
    use super::redact;
    assert_eq!(
        redact("redis://:secret@host:6379/0"),
        "redis://:***@host:6379/0"
    );
    assert_eq!(
        redact("rediss://user:secret@host:6380"),
        "rediss://user:***@host:6380"
    );
    assert_eq!(redact("redis://user@host"), "redis://user:***@host");
    assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    assert_eq!(redact("not a url"), "not a url");
}

/// The conformance suite again on a real Redis Cluster of three masters (one for the test
/// process, a key prefix per test), with [`DEFAULT_TEST_SHARDS`] shards: every script must
/// touch one slot, and what spans tasks must read every shard.
mod on_a_cluster {
    use super::*;
    use reins_e2e::RedisCluster;

    struct ClusterFixture {
        store: Arc<RedisStore>,
        _background: Background,
    }

    impl Deref for ClusterFixture {
        type Target = dyn TaskStore;

        fn deref(&self) -> &(dyn TaskStore + 'static) {
            self.store.as_ref()
        }
    }

    fn fixture() -> ClusterFixture {
        let background = Background::new();
        let prefix = format!("t{}:", uuid::Uuid::now_v7().simple());
        let store = RedisStore::connect(
            &RedisCluster::shared().url(),
            &prefix,
            RETENTION,
            &background,
        )
        .expect("connect");
        ClusterFixture {
            store: Arc::new(store),
            _background: background,
        }
    }

    conformance::suite!(fixture());

    #[tokio::test]
    async fn a_tree_lives_in_its_roots_shard_and_roots_spread_over_shards() {
        let fixture = fixture();
        let mut shards = std::collections::HashSet::new();
        for _ in 0..64 {
            let root = conformance::insert_new(&*fixture, NewTask::default()).await;
            let child = conformance::insert_new(
                &*fixture,
                NewTask {
                    parent_id: Some(root.id),
                    ..NewTask::default()
                },
            )
            .await;
            let keys = &fixture.store.keys;
            assert_eq!(keys.shard_of(child.id), keys.shard_of(root.id));
            shards.insert(keys.shard_of(root.id));
        }
        assert!(shards.len() > DEFAULT_TEST_SHARDS / 2, "{shards:?}");
    }
}
