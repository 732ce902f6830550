//! The behaviour every [`TaskStore`] must have, as a test suite that runs against each
//! implementation: `conformance::suite!(expression making an Arc<dyn TaskStore>)`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use serde_json::json;

use super::{ActiveFilter, Created, Swap, TaskStore, Update};
use crate::task::state_machine::{Event, Fence, Report, apply};
use crate::task::{NewTask, Task, TaskId, TaskState};

const OWNER: &str = "conformance";

pub fn new_task(spec: NewTask) -> Task {
    Task::new(TaskId::now_v7(), spec, SystemTime::now())
}

fn sleep_task() -> Task {
    new_task(NewTask {
        kind: "sleep".into(),
        ..NewTask::default()
    })
}

async fn insert(store: &dyn TaskStore, task: Task) -> Task {
    match store.create(task).await.unwrap() {
        Created::New(task) => task,
        Created::Existing(task) => panic!("unexpected existing task {}", task.id),
    }
}

/// Applies `event` and stores the result, panicking on any conflict.
async fn advance(store: &dyn TaskStore, task: &Task, event: Event) -> Task {
    let next = apply(task, &event, SystemTime::now()).unwrap().unwrap();
    assert!(matches!(
        store.compare_and_swap(&next).await.unwrap(),
        Swap::Swapped
    ));
    next
}

async fn start(store: &dyn TaskStore, task: &Task) -> Task {
    advance(
        store,
        task,
        Event::Start {
            owner: OWNER.into(),
        },
    )
    .await
}

async fn complete(store: &dyn TaskStore, task: &Task) -> Task {
    let fence = Fence {
        owner: OWNER.into(),
        attempt: task.attempt,
    };
    let report = Report::Complete {
        result: json!("done"),
    };
    advance(store, task, Event::Report { fence, report }).await
}

/// Stores one running and one completed task; returns their ids.
pub async fn one_active_one_finished(store: &dyn TaskStore) -> (TaskId, TaskId) {
    let active = insert(store, sleep_task()).await;
    let finished = insert(store, sleep_task()).await;
    let finished = start(store, &finished).await;
    complete(store, &finished).await;
    (active.id, finished.id)
}

pub async fn created_tasks_read_back_unchanged(store: &dyn TaskStore) {
    let task = insert(store, sleep_task()).await;
    assert_eq!(store.get(task.id).await.unwrap(), Some(task));
    assert_eq!(store.get(TaskId::now_v7()).await.unwrap(), None);
}

pub async fn a_known_request_id_returns_the_existing_task(store: &dyn TaskStore) {
    let spec = NewTask {
        kind: "sleep".into(),
        request_id: format!("req-{}", TaskId::now_v7()),
        ..NewTask::default()
    };
    let first = insert(store, new_task(spec.clone())).await;
    match store.create(new_task(spec)).await.unwrap() {
        Created::Existing(existing) => assert_eq!(existing.id, first.id),
        Created::New(task) => panic!("a second task {} was created", task.id),
    }
}

pub async fn compare_and_swap_needs_the_previous_version(store: &dyn TaskStore) {
    let task = insert(store, sleep_task()).await;
    let running = start(store, &task).await;
    // A write derived from the old version conflicts and returns the current record.
    let stale = apply(
        &task,
        &Event::HardCancel { reason: "x".into() },
        SystemTime::now(),
    )
    .unwrap()
    .unwrap();
    assert!(matches!(
        store.compare_and_swap(&stale).await.unwrap(),
        Swap::Conflict
    ));
    assert_eq!(
        store.get(task.id).await.unwrap(),
        Some(running.clone()),
        "the conflicting write changed nothing"
    );
    let mut unknown = running.clone();
    unknown.id = TaskId::now_v7();
    assert!(matches!(
        store.compare_and_swap(&unknown).await.unwrap(),
        Swap::Missing
    ));
}

pub async fn a_terminal_record_is_never_replaced(store: &dyn TaskStore) {
    let task = insert(store, sleep_task()).await;
    let done = complete(store, &start(store, &task).await).await;
    let mut forged = done.clone();
    forged.version += 1;
    forged.state = TaskState::Running;
    assert!(matches!(
        store.compare_and_swap(&forged).await.unwrap(),
        Swap::Conflict
    ));
    assert_eq!(store.get(task.id).await.unwrap(), Some(done));
}

pub async fn listing_filters_orders_and_pages_active_tasks(store: &dyn TaskStore) {
    let session = format!("s-{}", TaskId::now_v7());
    let labels = BTreeMap::from([("team".to_owned(), "red".to_owned())]);
    let mut matching = Vec::new();
    for i in 0..5 {
        let spec = NewTask {
            kind: "sleep".into(),
            session_id: session.clone(),
            labels: if i % 2 == 0 {
                labels.clone()
            } else {
                BTreeMap::new()
            },
            ..NewTask::default()
        };
        let task = insert(store, new_task(spec)).await;
        if i % 2 == 0 {
            matching.push(task.id);
        }
    }
    // Finished tasks are not listed.
    let done = insert(
        store,
        new_task(NewTask {
            kind: "sleep".into(),
            session_id: session.clone(),
            labels: labels.clone(),
            ..NewTask::default()
        }),
    )
    .await;
    complete(store, &start(store, &done).await).await;

    let filter = ActiveFilter {
        session_id: Some(session.clone()),
        labels,
        ..ActiveFilter::default()
    };
    let all: Vec<TaskId> = store
        .list_active(&filter, None, 100)
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(all, matching);

    let first = store.list_active(&filter, None, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    let rest = store
        .list_active(&filter, Some(first[1].id), 2)
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|t| t.id).collect::<Vec<_>>(), matching[2..]);

    let other_kind = ActiveFilter {
        session_id: Some(session),
        kind: Some("exec".into()),
        ..ActiveFilter::default()
    };
    assert!(
        store
            .list_active(&other_kind, None, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn children_are_found_by_parent(store: &dyn TaskStore) {
    let parent = insert(store, sleep_task()).await;
    let child_spec = NewTask {
        kind: "sleep".into(),
        parent_id: Some(parent.id),
        ..NewTask::default()
    };
    let first = insert(store, new_task(child_spec.clone())).await;
    let second = insert(store, new_task(child_spec)).await;
    complete(store, &start(store, &first).await).await;
    let children: Vec<TaskId> = store
        .children(parent.id)
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(
        children,
        vec![first.id, second.id],
        "finished children are still children"
    );
    assert!(store.children(second.id).await.unwrap().is_empty());
}

pub async fn the_pending_queue_is_oldest_first_and_forgets_started_tasks(store: &dyn TaskStore) {
    // Other tests share the store: look only at the tasks made here.
    let ours: Vec<Task> = {
        let mut tasks = Vec::new();
        for _ in 0..3 {
            tasks.push(insert(store, sleep_task()).await);
        }
        tasks
    };
    start(store, &ours[0]).await;
    let queue: Vec<TaskId> = store
        .oldest_pending(10_000)
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    let positions: Vec<Option<usize>> = ours
        .iter()
        .map(|t| queue.iter().position(|id| *id == t.id))
        .collect();
    assert_eq!(positions[0], None, "a started task is not pending");
    assert!(positions[1].unwrap() < positions[2].unwrap(), "older first");
}

pub async fn subscribers_see_every_change_in_order_until_the_end(store: &dyn TaskStore) {
    let task = insert(store, sleep_task()).await;
    let mut updates = store.subscribe(task.id).await.unwrap();
    let running = start(store, &task).await;
    let done = complete(store, &running).await;
    let mut seen = Vec::new();
    while let Some(update) = tokio::time::timeout(Duration::from_secs(5), updates.next())
        .await
        .unwrap()
    {
        match update {
            Update::Changed(task) => seen.push(task.version),
            Update::Lagged => panic!("two updates cannot lag"),
        }
    }
    assert_eq!(seen, vec![running.version, done.version]);
}

/// Declares one `#[tokio::test]` per conformance check, each on a store made by `$make`.
macro_rules! suite {
    ($make:expr) => {
        $crate::store::conformance::suite!(@tests $make;
            created_tasks_read_back_unchanged,
            a_known_request_id_returns_the_existing_task,
            compare_and_swap_needs_the_previous_version,
            a_terminal_record_is_never_replaced,
            listing_filters_orders_and_pages_active_tasks,
            children_are_found_by_parent,
            the_pending_queue_is_oldest_first_and_forgets_started_tasks,
            subscribers_see_every_change_in_order_until_the_end,
        );
    };
    (@tests $make:expr; $($check:ident),* $(,)?) => {
        mod conformance_suite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    let store = $make;
                    $crate::store::conformance::$check(&*store).await;
                }
            )*
        }
    };
}
pub(crate) use suite;
