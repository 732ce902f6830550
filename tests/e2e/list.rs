//! ListActive: which tasks are listed (only unfinished ones), filters, creation order and
//! paging with opaque, keyset-stable page tokens.

use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use reins_client::proto::{ListActiveRequest, TaskState};
use reins_client::{Client, StartTask};
use reins_e2e::{Reinsd, long_sleep, sleep_params, wait_finished, wait_state};
use serde_json::json;
use tokio_stream::StreamExt;

/// A session id no other test uses, so listings by session see only this test's tasks.
fn unique_session(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{test}-{}-{nanos}", std::process::id())
}

/// A server that runs one task at a time: after the first long task, every task waits
/// PENDING, which costs nothing.
fn one_slot_server(extra: &[&str]) -> Reinsd {
    let mut args = vec!["--max-concurrency", "1"];
    args.extend_from_slice(extra);
    Reinsd::with_args(&args)
}

async fn start(client: &Client, task: StartTask) -> String {
    client.start(task).await.expect("start task").id
}

/// Starts `n` long tasks one after the other in `session`; their ids in creation order.
async fn start_many(client: &Client, session: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(start(client, long_sleep().session(session)).await);
    }
    ids
}

fn in_session(session: &str) -> ListActiveRequest {
    ListActiveRequest {
        session_id: session.to_owned(),
        ..Default::default()
    }
}

/// Every task matching `filter`, page after page, in the order listed.
async fn listed_ids(client: &Client, filter: ListActiveRequest) -> Vec<String> {
    client
        .list_all(filter)
        .map(|task| task.expect("list").id)
        .collect()
        .await
}

/// Reads every page from `filter.page_token` on: the ids of each page and its token.
async fn pages(client: &Client, mut filter: ListActiveRequest) -> Vec<(Vec<String>, String)> {
    let mut pages = Vec::new();
    loop {
        let page = client.list(filter.clone()).await.expect("list page");
        let ids = page.tasks.into_iter().map(|task| task.id).collect();
        let token = page.next_page_token;
        pages.push((ids, token.clone()));
        if token.is_empty() {
            return pages;
        }
        assert!(pages.len() <= 10_000, "paging does not end");
        filter.page_token = token;
    }
}

fn assert_no_duplicates(ids: &[String]) {
    let mut seen = HashSet::new();
    for id in ids {
        assert!(seen.insert(id), "{id} is listed twice");
    }
}

fn pick(ids: &[&String]) -> Vec<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

#[tokio::test]
async fn only_unfinished_tasks_are_listed() {
    let server = Reinsd::with_args(&["--max-concurrency", "3"]);
    let client = server.client().await;
    let session = unique_session("unfinished");

    let running = start(&client, long_sleep().session(&session)).await;
    let params = json!({"steps": 2, "step_ms": 10, "ask": "continue?"});
    let waiting = start(
        &client,
        StartTask::new("sleep").params(params).session(&session),
    )
    .await;
    wait_state(&client, &waiting, TaskState::WaitingForAnswer).await;

    let completed = start(
        &client,
        StartTask::new("sleep")
            .params(sleep_params(0, 0))
            .session(&session),
    )
    .await;
    assert_eq!(
        wait_finished(&client, &completed).await.state(),
        TaskState::Completed
    );
    let params = json!({"steps": 1, "step_ms": 1, "fail_at_step": 1});
    let failed = start(
        &client,
        StartTask::new("sleep").params(params).session(&session),
    )
    .await;
    assert_eq!(
        wait_finished(&client, &failed).await.state(),
        TaskState::Failed
    );

    // The third slot frees once the finished tasks have released it.
    let running_too = start(&client, long_sleep().session(&session)).await;
    wait_state(&client, &running_too, TaskState::Running).await;
    let pending = client.start(long_sleep().session(&session)).await.unwrap();
    assert_eq!(pending.state(), TaskState::Pending, "every slot is taken");
    let cancelled = start(&client, long_sleep().session(&session)).await;
    client.hard_cancel(&cancelled, "test").await.unwrap();
    assert_eq!(
        client.check(&cancelled).await.unwrap().state(),
        TaskState::Cancelled
    );

    let listed = client.list(in_session(&session)).await.unwrap();
    assert!(listed.next_page_token.is_empty());
    let states: Vec<(String, TaskState)> = listed
        .tasks
        .iter()
        .map(|task| (task.id.clone(), task.state()))
        .collect();
    assert_eq!(
        states,
        [
            (running, TaskState::Running),
            (waiting, TaskState::WaitingForAnswer),
            (running_too, TaskState::Running),
            (pending.id, TaskState::Pending),
        ],
        "the active tasks in creation order; COMPLETED, FAILED and CANCELLED ones are not listed"
    );
}

#[tokio::test]
async fn filters_combine_and_every_given_label_must_match() {
    // Exec tasks are only validated, never run: the one slot is taken by the blocker.
    let server = one_slot_server(&["--allow-exec", "sleep"]);
    let client = server.client().await;
    let session = unique_session("filters");
    let other_session = unique_session("filters-other");
    let blocker = start(&client, long_sleep().session(&other_session)).await;

    let labels = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let with_labels = |task: StartTask, pairs: &[(&str, &str)]| {
        pairs.iter().fold(task, |task, (k, v)| task.label(*k, *v))
    };
    let exec = |session: &str| {
        StartTask::new("exec")
            .params(json!({"argv": ["sleep", "1"]}))
            .session(session)
    };
    let team_a_prod = [("team", "a"), ("env", "prod")];

    let p1 = start(
        &client,
        with_labels(long_sleep().session(&session), &[("team", "a")]),
    )
    .await;
    let p2 = start(
        &client,
        with_labels(long_sleep().session(&session), &[("team", "b")]),
    )
    .await;
    let c1 = start(
        &client,
        with_labels(long_sleep().session(&session).parent(&p1), &team_a_prod),
    )
    .await;
    let c2 = start(
        &client,
        with_labels(
            exec(&session).parent(&p1),
            &[("team", "a"), ("env", "prod"), ("extra", "x")],
        ),
    )
    .await;
    let c3 = start(
        &client,
        with_labels(exec(&session).parent(&p2), &team_a_prod),
    )
    .await;
    let o1 = start(
        &client,
        with_labels(
            long_sleep().session(&other_session).parent(&p1),
            &team_a_prod,
        ),
    )
    .await;
    let e1 = start(&client, exec(&session)).await;

    let filter =
        |kind: &str, session: &str, parent: &str, pairs: &[(&str, &str)]| ListActiveRequest {
            kind: kind.to_owned(),
            session_id: session.to_owned(),
            parent_id: parent.to_owned(),
            labels: labels(pairs),
            ..Default::default()
        };
    let cases = [
        (
            "no filter",
            filter("", "", "", &[]),
            pick(&[&blocker, &p1, &p2, &c1, &c2, &c3, &o1, &e1]),
        ),
        (
            "session",
            filter("", &session, "", &[]),
            pick(&[&p1, &p2, &c1, &c2, &c3, &e1]),
        ),
        ("kind", filter("exec", "", "", &[]), pick(&[&c2, &c3, &e1])),
        (
            "kind and session",
            filter("sleep", &session, "", &[]),
            pick(&[&p1, &p2, &c1]),
        ),
        ("parent", filter("", "", &p1, &[]), pick(&[&c1, &c2, &o1])),
        (
            "parent and session",
            filter("", &session, &p1, &[]),
            pick(&[&c1, &c2]),
        ),
        (
            "one label",
            filter("", &session, "", &[("team", "a")]),
            pick(&[&p1, &c1, &c2, &c3]),
        ),
        (
            "two labels, extra labels allowed",
            filter("", "", "", &team_a_prod),
            pick(&[&c1, &c2, &c3, &o1]),
        ),
        (
            "labels and session",
            filter("", &session, "", &team_a_prod),
            pick(&[&c1, &c2, &c3]),
        ),
        (
            "labels and parent",
            filter("", "", &p1, &team_a_prod),
            pick(&[&c1, &c2, &o1]),
        ),
        (
            "everything",
            filter("exec", &session, &p1, &team_a_prod),
            pick(&[&c2]),
        ),
        (
            "a label value that differs",
            filter("", &session, "", &[("team", "c")]),
            vec![],
        ),
        (
            "one of two labels differs",
            filter("", "", "", &[("team", "a"), ("env", "dev")]),
            vec![],
        ),
        (
            "a label key nobody has",
            filter("", "", "", &[("owner", "me")]),
            vec![],
        ),
        ("unknown kind", filter("teleport", "", "", &[]), vec![]),
        ("unknown session", filter("", "nobody", "", &[]), vec![]),
        (
            "a parent without children",
            filter("", "", &c1, &[]),
            vec![],
        ),
    ];
    for (case, filter, expected) in cases {
        assert_eq!(listed_ids(&client, filter).await, expected, "{case}");
    }
}

#[tokio::test]
async fn tasks_are_listed_in_creation_order() {
    // Two run, the rest wait: order must not depend on state.
    let server = Reinsd::with_args(&["--max-concurrency", "2"]);
    let client = server.client().await;
    let session = unique_session("order");
    let created = start_many(&client, &session, 12).await;

    let listed = client.list(in_session(&session)).await.unwrap().tasks;
    let ids: Vec<String> = listed.iter().map(|task| task.id.clone()).collect();
    assert_eq!(ids, created, "listed in creation order");
    let mut ascending = ids.clone();
    ascending.sort();
    assert_eq!(ids, ascending, "ids ascend in creation order");
    let created_at: Vec<_> = listed
        .iter()
        .map(|task| {
            task.created_at
                .map(|t| (t.seconds, t.nanos))
                .expect("created_at")
        })
        .collect();
    assert!(
        created_at.is_sorted(),
        "creation times do not go back: {created_at:?}"
    );
    let states: HashSet<TaskState> = listed.iter().map(|task| task.state()).collect();
    assert_eq!(
        states,
        HashSet::from([TaskState::Running, TaskState::Pending])
    );
}

#[tokio::test]
async fn pages_default_to_100_and_small_pages_walk_everything_once() {
    let server = one_slot_server(&[]);
    let client = server.client().await;
    let session = unique_session("paging");
    let created = start_many(&client, &session, 120).await;

    let default = pages(&client, in_session(&session)).await;
    let sizes: Vec<usize> = default.iter().map(|(ids, _)| ids.len()).collect();
    assert_eq!(sizes, [100, 20], "default page size is 100");
    assert!(!default[0].1.is_empty(), "a token while more tasks follow");

    for page_size in [7, 10, 1] {
        let walked = pages(
            &client,
            ListActiveRequest {
                page_size,
                ..in_session(&session)
            },
        )
        .await;
        let (last_ids, last_token) = walked.last().unwrap();
        assert!(
            last_token.is_empty(),
            "page size {page_size}: the last page has no token"
        );
        assert!(
            !last_ids.is_empty(),
            "page size {page_size}: no empty page at the end"
        );
        for (ids, token) in &walked[..walked.len() - 1] {
            assert_eq!(
                ids.len(),
                page_size as usize,
                "page size {page_size}: full pages"
            );
            assert!(
                !token.is_empty(),
                "page size {page_size}: a token on every page but the last"
            );
        }
        let all: Vec<String> = walked.into_iter().flat_map(|(ids, _)| ids).collect();
        assert_no_duplicates(&all);
        assert_eq!(
            all, created,
            "page size {page_size}: every task once, in order"
        );
    }
}

#[tokio::test]
async fn page_sizes_above_1000_are_served_as_1000() {
    let server = one_slot_server(&[]);
    let client = server.client().await;
    let session = unique_session("max-page");
    // Pending tasks are cheap: start them from a few concurrent callers.
    let starters: Vec<_> = (0..8)
        .map(|_| {
            let (client, session) = (client.clone(), session.clone());
            tokio::spawn(async move { start_many(&client, &session, 126).await })
        })
        .collect();
    let mut created = HashSet::new();
    for starter in starters {
        created.extend(starter.await.unwrap());
    }
    assert_eq!(created.len(), 1008);

    for page_size in [1001, 5000, i32::MAX] {
        let walked = pages(
            &client,
            ListActiveRequest {
                page_size,
                ..in_session(&session)
            },
        )
        .await;
        let sizes: Vec<usize> = walked.iter().map(|(ids, _)| ids.len()).collect();
        assert_eq!(sizes, [1000, 8], "page size {page_size} is served as 1000");
        let all: Vec<String> = walked.into_iter().flat_map(|(ids, _)| ids).collect();
        assert_no_duplicates(&all);
        assert_eq!(all.into_iter().collect::<HashSet<_>>(), created);
    }
    let exactly = client
        .list(ListActiveRequest {
            page_size: 1000,
            ..in_session(&session)
        })
        .await;
    assert_eq!(exactly.unwrap().tasks.len(), 1000);
}

#[tokio::test]
async fn page_tokens_stay_valid_while_tasks_come_and_go() {
    let server = one_slot_server(&[]);
    let client = server.client().await;
    let session = unique_session("stable-tokens");
    let created = start_many(&client, &session, 30).await;
    let filter = ListActiveRequest {
        page_size: 10,
        ..in_session(&session)
    };

    let first = client.list(filter.clone()).await.unwrap();
    let first_ids: Vec<String> = first.tasks.iter().map(|task| task.id.clone()).collect();
    assert_eq!(first_ids, created[..10]);

    // Gone between the pages: one from the middle of page 1, the last of page 1 (the
    // token's own position) and two from page 2.
    let cancelled = [&created[3], &created[9], &created[12], &created[15]];
    for id in cancelled {
        client.hard_cancel(id, "test").await.unwrap();
    }
    let added = start_many(&client, &session, 3).await;

    let rest = pages(
        &client,
        ListActiveRequest {
            page_token: first.next_page_token,
            ..filter
        },
    )
    .await;
    let rest_ids: Vec<String> = rest.into_iter().flat_map(|(ids, _)| ids).collect();
    let mut all = first_ids.clone();
    all.extend(rest_ids.iter().cloned());
    assert_no_duplicates(&all);

    let stayed: Vec<&String> = created
        .iter()
        .filter(|id| !cancelled.contains(id))
        .collect();
    for id in &stayed {
        assert_eq!(
            all.iter().filter(|listed| listed == id).count(),
            1,
            "{id} listed exactly once"
        );
    }
    let expected: Vec<String> = created[10..]
        .iter()
        .filter(|id| !cancelled.contains(id))
        .chain(&added)
        .cloned()
        .collect();
    assert_eq!(
        rest_ids, expected,
        "the rest goes on after page 1; new tasks come last"
    );
}

#[tokio::test]
async fn page_tokens_are_opaque() {
    let server = one_slot_server(&[]);
    let client = server.client().await;
    let session = unique_session("opaque");
    let created = start_many(&client, &session, 3).await;

    let page = client
        .list(ListActiveRequest {
            page_size: 2,
            ..in_session(&session)
        })
        .await
        .unwrap();
    let token = page.next_page_token;
    assert!(!token.is_empty());
    let last = &page.tasks.last().unwrap().id;
    assert!(
        !token.contains(last.as_str()),
        "the token {token:?} is not a raw task id"
    );
    for id in &created {
        assert_ne!(&token, id);
    }
    let next = client
        .list(ListActiveRequest {
            page_token: token,
            ..in_session(&session)
        })
        .await;
    let ids: Vec<String> = next
        .unwrap()
        .tasks
        .into_iter()
        .map(|task| task.id)
        .collect();
    assert_eq!(ids, created[2..]);
}
