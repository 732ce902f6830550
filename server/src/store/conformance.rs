//! The behaviour every [`TaskStore`] must have, as a test suite that runs against each
//! implementation: `conformance::suite!(expression making an Arc<dyn TaskStore>)`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use serde_json::json;

mod tenants;

pub use self::tenants::*;
use super::history::HISTORY_LEN;
use super::{ActiveFilter, Created, Swap, TaskStore, Update};
use crate::task::budget::Spending;
use crate::task::state_machine::{Event, Fence, Report, apply, apply_within};
use crate::task::{CheckpointLimits, NewTask, Task, TaskId, TaskState, Usage};

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

/// Creates a task of `spec`; returns it as stored (a store may place it, changing its id).
pub async fn insert_new(store: &dyn TaskStore, spec: NewTask) -> Task {
    insert(store, new_task(spec)).await
}

async fn insert(store: &dyn TaskStore, task: Task) -> Task {
    match store.create(task).await.unwrap() {
        Created::New(task) | Created::NewFirst(task) => task,
        other => panic!("unexpected {other:?}"),
    }
}

/// Applies `event` and stores the result, panicking on any conflict.
async fn advance(store: &dyn TaskStore, task: &Task, event: Event) -> Task {
    let next = apply(task, &event, SystemTime::now()).unwrap().unwrap();
    assert!(matches!(
        store.compare_and_swap(&next).await.unwrap(),
        Swap::Swapped | Swap::SwappedChildless
    ));
    next
}

/// Starts `task` as replica `owner` would.
async fn start_as(store: &dyn TaskStore, task: &Task, owner: &str) -> Task {
    let event = Event::Start {
        owner: owner.to_owned(),
        worker: String::new(),
    };
    advance(store, task, event).await
}

async fn start(store: &dyn TaskStore, task: &Task) -> Task {
    start_as(store, task, OWNER).await
}

/// Stores one running and one completed task; returns their ids.
pub async fn one_active_one_finished(store: &dyn TaskStore) -> (TaskId, TaskId) {
    one_active_one_finished_owned_by(store, OWNER).await
}

/// Stores one task running on `owner` and one that it completed; returns their ids.
pub async fn one_active_one_finished_owned_by(
    store: &dyn TaskStore,
    owner: &str,
) -> (TaskId, TaskId) {
    let start_on = |task: Task| async move { start_as(store, &task, owner).await };
    let active = start_on(insert(store, sleep_task()).await).await;
    let finished = start_on(insert(store, sleep_task()).await).await;
    complete_as_owner(store, &finished).await;
    (active.id, finished.id)
}

/// Completes a running task as its owner would.
pub async fn complete_as_owner(store: &dyn TaskStore, task: &Task) -> Task {
    let fence = Fence {
        owner: task.owner.clone(),
        attempt: task.attempt,
    };
    let report = Report::Complete {
        result: json!("done"),
    };
    advance(store, task, Event::Report { fence, report }).await
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
        other => panic!("expected the existing task, got {other:?}"),
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
    let done = complete_as_owner(store, &start(store, &task).await).await;
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
    complete_as_owner(store, &start(store, &done).await).await;

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

/// Each filter finds exactly the active tasks it matches, however many other tasks there
/// are, and forgets the ones that finished (the stores index kind, session and parent).
pub async fn each_indexed_filter_finds_its_active_tasks_only(store: &dyn TaskStore) {
    let unique = TaskId::now_v7();
    let (kind, session) = (format!("kind-{unique}"), format!("session-{unique}"));
    let parent = insert(store, sleep_task()).await;
    let spec = |kind: &str, session: &str, parent: Option<TaskId>| NewTask {
        kind: kind.to_owned(),
        session_id: session.to_owned(),
        parent_id: parent,
        ..NewTask::default()
    };
    let of_kind = insert(store, new_task(spec(&kind, "", None))).await;
    let in_session = insert(store, new_task(spec("sleep", &session, None))).await;
    let child = insert(store, new_task(spec("sleep", "", Some(parent.id)))).await;
    let all_three = insert(store, new_task(spec(&kind, &session, Some(parent.id)))).await;
    let finished = insert(store, new_task(spec(&kind, &session, Some(parent.id)))).await;
    complete_as_owner(store, &start(store, &finished).await).await;
    for _ in 0..5 {
        insert(store, sleep_task()).await;
    }
    let listed = |filter: ActiveFilter| async move {
        store
            .list_active(&filter, None, 100)
            .await
            .unwrap()
            .iter()
            .map(|task| task.id)
            .collect::<Vec<_>>()
    };
    let by_kind = ActiveFilter {
        kind: Some(kind.clone()),
        ..ActiveFilter::default()
    };
    let by_session = ActiveFilter {
        session_id: Some(session.clone()),
        ..ActiveFilter::default()
    };
    let by_parent = ActiveFilter {
        parent_id: Some(parent.id),
        ..ActiveFilter::default()
    };
    assert_eq!(listed(by_kind.clone()).await, [of_kind.id, all_three.id]);
    assert_eq!(
        listed(by_session.clone()).await,
        [in_session.id, all_three.id]
    );
    assert_eq!(listed(by_parent.clone()).await, [child.id, all_three.id]);
    let combined = ActiveFilter {
        kind: Some(kind.clone()),
        session_id: Some(session.clone()),
        parent_id: Some(parent.id),
        ..ActiveFilter::default()
    };
    assert_eq!(listed(combined).await, [all_three.id]);
    let unknown = ActiveFilter {
        kind: Some(format!("no-such-kind-{unique}")),
        ..ActiveFilter::default()
    };
    assert!(listed(unknown).await.is_empty());
    // Paging within an index.
    let first = store.list_active(&by_kind, None, 1).await.unwrap();
    assert_eq!(first.iter().map(|t| t.id).collect::<Vec<_>>(), [of_kind.id]);
    let rest = store
        .list_active(&by_kind, Some(of_kind.id), 10)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|t| t.id).collect::<Vec<_>>(),
        [all_three.id]
    );
    // A task that finishes leaves every index.
    complete_as_owner(store, &start(store, &all_three).await).await;
    assert_eq!(listed(by_kind).await, [of_kind.id]);
    assert_eq!(listed(by_session).await, [in_session.id]);
    assert_eq!(listed(by_parent).await, [child.id]);
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
    complete_as_owner(store, &start(store, &first).await).await;
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

/// The write that ends a task says whether it has children (the engine releases them
/// only then); any other write says nothing about them.
pub async fn ending_a_task_says_whether_it_has_children(store: &dyn TaskStore) {
    let finish = |task: Task| async move {
        let task = start(store, &task).await;
        let fence = Fence {
            owner: task.owner.clone(),
            attempt: task.attempt,
        };
        let report = Report::Complete { result: json!(1) };
        let next = apply(&task, &Event::Report { fence, report }, SystemTime::now())
            .unwrap()
            .unwrap();
        store.compare_and_swap(&next).await.unwrap()
    };
    let leaf = insert(store, sleep_task()).await;
    let started = apply(
        &leaf,
        &Event::Start {
            owner: OWNER.to_owned(),
            worker: String::new(),
        },
        SystemTime::now(),
    )
    .unwrap()
    .unwrap();
    assert!(
        matches!(
            store.compare_and_swap(&started).await.unwrap(),
            Swap::Swapped
        ),
        "a start is not an end"
    );
    let leaf = insert(store, sleep_task()).await;
    assert!(matches!(finish(leaf).await, Swap::SwappedChildless));
    let parent = insert(store, sleep_task()).await;
    insert(
        store,
        new_task(NewTask {
            kind: "sleep".into(),
            parent_id: Some(parent.id),
            ..NewTask::default()
        }),
    )
    .await;
    assert!(matches!(finish(parent).await, Swap::Swapped));
}

/// A create says when the new task is first in the queue (StartTask then starts it
/// without reading the queue); behind an older waiting task it does not. (The tasks are
/// children of one parent: on a Redis Cluster "first" is within a shard, and a tree is in
/// one.)
pub async fn a_create_says_when_nothing_older_waits(store: &dyn TaskStore) {
    let parent = insert(store, sleep_task()).await;
    let parent = start(store, &parent).await;
    let sleep_task = || {
        new_task(NewTask {
            kind: "sleep".into(),
            parent_id: Some(parent.id),
            ..NewTask::default()
        })
    };
    let first = store.create(sleep_task()).await.unwrap();
    let Created::NewFirst(first) = first else {
        panic!("an empty queue: {first:?}")
    };
    let second = store.create(sleep_task()).await.unwrap();
    let Created::New(second) = second else {
        panic!("behind an older pending task: {second:?}")
    };
    start(store, &first).await;
    start(store, &second).await;
    let third = store.create(sleep_task()).await.unwrap();
    assert!(
        matches!(third, Created::NewFirst(_)),
        "started tasks wait no more: {third:?}"
    );
}

/// The oldest waiting task of a tenant is first of its tenant; the next one is once it
/// started. (Children of one parent: on a Redis Cluster this is within a shard.)
pub async fn the_first_of_a_tenant_is_its_oldest_waiting_task(store: &dyn TaskStore) {
    let parent = insert(store, sleep_task()).await;
    let parent = start(store, &parent).await;
    let child = |tenant: &str| NewTask {
        kind: "sleep".into(),
        tenant: tenant.into(),
        parent_id: Some(parent.id),
        ..NewTask::default()
    };
    let older = insert(store, new_task(child("t1"))).await;
    let other_tenant = insert(store, new_task(child("t2"))).await;
    let newer = insert(store, new_task(child("t1"))).await;
    assert!(store.first_of_its_tenant(&older).await.unwrap());
    assert!(store.first_of_its_tenant(&other_tenant).await.unwrap());
    assert!(!store.first_of_its_tenant(&newer).await.unwrap());
    start(store, &older).await;
    assert!(store.first_of_its_tenant(&newer).await.unwrap());
}

pub async fn the_pending_queue_is_oldest_first_and_forgets_started_tasks(store: &dyn TaskStore) {
    // Other tests share the store: look only at the tasks made here.
    let depth_before = store.queue_depth().await.unwrap();
    let ours: Vec<Task> = {
        let mut tasks = Vec::new();
        for _ in 0..3 {
            tasks.push(insert(store, sleep_task()).await);
        }
        tasks
    };
    start(store, &ours[0]).await;
    assert_eq!(
        store.queue_depth().await.unwrap(),
        depth_before + 2,
        "the depth counts the pending tasks only"
    );
    let queue: Vec<TaskId> = store
        .oldest_pending(None, 10_000)
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
    let after_second: Vec<TaskId> = store
        .oldest_pending(Some(ours[1].id), 10_000)
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert!(
        after_second.contains(&ours[2].id) && !after_second.contains(&ours[1].id),
        "pages go on after a task"
    );
}

pub async fn subscribers_see_every_change_in_order_until_the_end(store: &dyn TaskStore) {
    let task = insert(store, sleep_task()).await;
    let mut updates = store.subscribe(task.id).await.unwrap();
    let running = start(store, &task).await;
    let done = complete_as_owner(store, &running).await;
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

async fn progress(store: &dyn TaskStore, task: &Task, step: u64) -> Task {
    let fence = Fence {
        owner: task.owner.clone(),
        attempt: task.attempt,
    };
    let report = Report::Progress {
        fraction: 0.0,
        message: format!("step {step}"),
        partial_result: Some(json!(step)),
        usage: Default::default(),
    };
    advance(store, task, Event::Report { fence, report }).await
}

pub async fn a_write_from_another_owner_is_refused_whatever_its_version(store: &dyn TaskStore) {
    let running = start(store, &insert(store, sleep_task()).await).await;
    let mut stolen = progress(store, &running, 1).await;
    stolen.version += 1;
    stolen.owner = "another-replica".into();
    assert!(matches!(
        store.compare_and_swap(&stolen).await.unwrap(),
        Swap::Conflict
    ));
    let mut restarted = store.get(running.id).await.unwrap().unwrap();
    restarted.version += 1;
    restarted.attempt += 1;
    assert!(matches!(
        store.compare_and_swap(&restarted).await.unwrap(),
        Swap::Conflict
    ));
}

pub async fn a_worker_task_moves_to_another_owner_in_the_same_attempt(store: &dyn TaskStore) {
    // Connection ids are UUIDv7s: later ones compare greater.
    let (first, second) = (TaskId::now_v7(), TaskId::now_v7());
    let event = Event::Start {
        owner: OWNER.to_owned(),
        worker: format!("w/{first}"),
    };
    let running = advance(store, &insert(store, sleep_task()).await, event).await;
    let mut old_owner = store.subscribe_owner(OWNER).await.unwrap();
    let adopt = Event::Adopt {
        owner: "replica-b".to_owned(),
        worker: format!("w/{second}"),
        attempt: running.attempt,
    };
    let moved = advance(store, &running, adopt).await;
    assert_eq!(store.get(running.id).await.unwrap(), Some(moved.clone()));
    let owned = |owner: &'static str| async move {
        let tasks = store.owned_by(owner).await.unwrap();
        tasks.iter().map(|task| task.id).collect::<Vec<_>>()
    };
    assert_eq!(owned("replica-b").await, vec![running.id]);
    assert!(owned(OWNER).await.is_empty(), "off the former owner's list");
    // The old owner may no longer write, whatever version it read.
    let mut stale = moved.clone();
    stale.version += 1;
    stale.owner = OWNER.to_owned();
    stale.worker = running.worker.clone();
    assert!(matches!(
        store.compare_and_swap(&stale).await.unwrap(),
        Swap::Conflict
    ));
    // A move needs a new worker connection too: a built-in task cannot be taken over.
    let mut same_worker = moved.clone();
    same_worker.version += 1;
    same_worker.owner = "replica-c".to_owned();
    assert!(matches!(
        store.compare_and_swap(&same_worker).await.unwrap(),
        Swap::Conflict
    ));
    // The former owner hears of the move at once, so its driver lets go.
    match tokio::time::timeout(Duration::from_secs(5), old_owner.next()).await {
        Ok(Some(Update::Changed(seen))) => assert_eq!(seen.task(), &moved),
        other => panic!("the former owner was not told of the move: {other:?}"),
    }
}

pub async fn history_replays_the_versions_after_a_given_one(store: &dyn TaskStore) {
    let mut task = start(store, &insert(store, sleep_task()).await).await;
    for step in 0..3 {
        task = progress(store, &task, step).await;
    }
    let versions = |history: Option<Vec<Task>>| {
        history
            .unwrap()
            .iter()
            .map(|t| t.version)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        versions(store.history(task.id, 2).await.unwrap()),
        vec![3, 4, 5]
    );
    assert_eq!(
        versions(store.history(task.id, 0).await.unwrap()),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(
        versions(store.history(task.id, 5).await.unwrap()),
        Vec::<u64>::new()
    );
    assert!(store.history(TaskId::now_v7(), 0).await.unwrap().is_none());
}

pub async fn history_is_bounded_and_says_when_it_no_longer_reaches_back(store: &dyn TaskStore) {
    let mut task = start(store, &insert(store, sleep_task()).await).await;
    for step in 0..(HISTORY_LEN as u64 + 10) {
        task = progress(store, &task, step).await;
    }
    assert!(
        store.history(task.id, 1).await.unwrap().is_none(),
        "version 2 has been dropped"
    );
    let recent = store
        .history(task.id, task.version - 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recent.len(), 5);
    let oldest_kept = task.version - HISTORY_LEN as u64 + 1;
    assert_eq!(
        store
            .history(task.id, oldest_kept - 1)
            .await
            .unwrap()
            .unwrap()
            .len(),
        HISTORY_LEN
    );
}

/// Reports `steps` checkpoints `{"step": i}` within `limits`, storing every version.
pub async fn checkpoints_within(
    store: &dyn TaskStore,
    task: &Task,
    steps: u64,
    limits: CheckpointLimits,
) -> Task {
    let mut task = task.clone();
    for step in 0..steps {
        let fence = Fence {
            owner: task.owner.clone(),
            attempt: task.attempt,
        };
        let report = Report::Progress {
            fraction: 0.0,
            message: format!("step {step}"),
            partial_result: Some(json!({ "step": step })),
            usage: Default::default(),
        };
        let event = Event::Report { fence, report };
        let next = apply_within(&task, &event, SystemTime::now(), limits)
            .unwrap()
            .unwrap();
        assert!(matches!(
            store.compare_and_swap(&next).await.unwrap(),
            Swap::Swapped
        ));
        task = next;
    }
    task
}

/// A record as a subscriber received it is the record as stored, checkpoint positions
/// included: the owner's driver writes the final report on its copy without a read.
pub async fn a_subscribers_copy_is_a_faithful_base_for_the_next_write(store: &dyn TaskStore) {
    let limits = CheckpointLimits {
        max_count: 4,
        max_bytes: 1024,
    };
    let running = start(store, &insert(store, sleep_task()).await).await;
    let mut updates = store.subscribe(running.id).await.unwrap();
    let task = checkpoints_within(store, &running, 30, limits).await;
    let copy = loop {
        match tokio::time::timeout(Duration::from_secs(5), updates.next())
            .await
            .unwrap()
            .unwrap()
        {
            Update::Changed(seen) if seen.version == task.version => break Task::clone(&seen),
            Update::Changed(_) => {}
            Update::Lagged => panic!("a subscriber of one task lagged"),
        }
    };
    assert_eq!(copy, task);
    let done = complete_as_owner(store, &copy).await;
    let finished = store.get(done.id).await.unwrap().unwrap();
    let newest: Vec<_> = (26..30).map(|step| json!({ "step": step })).collect();
    assert_eq!(
        finished.partial_results, newest,
        "the same checkpoints once finished"
    );
    assert_eq!(finished.partial_results_dropped, 26);
}

pub async fn bounded_checkpoints_keep_the_newest_and_their_dropped_count(store: &dyn TaskStore) {
    let limits = CheckpointLimits {
        max_count: 4,
        max_bytes: 1024,
    };
    let running = start(store, &insert(store, sleep_task()).await).await;
    let task = checkpoints_within(store, &running, 30, limits).await;
    let stored = store.get(task.id).await.unwrap().unwrap();
    let newest: Vec<_> = (26..30).map(|step| json!({ "step": step })).collect();
    assert_eq!(stored.partial_results, newest, "the newest, oldest first");
    assert_eq!(stored.partial_results_dropped, 26);
    assert_eq!(stored, task);
    let history = store
        .history(task.id, task.version - 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        history,
        vec![task.clone()],
        "history versions carry them too"
    );
    let done = complete_as_owner(store, &stored).await;
    let finished = store.get(done.id).await.unwrap().unwrap();
    assert_eq!(finished.partial_results, newest, "kept once finished");
    assert_eq!(finished.partial_results_dropped, 26);
}

pub async fn the_owner_channel_carries_every_change_of_its_tasks_only(store: &dyn TaskStore) {
    let owner = format!("owner-{}", TaskId::now_v7());
    let mut control = store.subscribe_owner(&owner).await.unwrap();
    start(store, &insert(store, sleep_task()).await).await; // owned by someone else
    let task = insert(store, sleep_task()).await;
    let running = start_as(store, &task, &owner).await;
    let fence = Fence {
        owner: owner.clone(),
        attempt: 1,
    };
    let report = Report::Complete { result: json!(1) };
    let done = advance(store, &running, Event::Report { fence, report }).await;
    for expected in [running, done] {
        match tokio::time::timeout(Duration::from_secs(5), control.next())
            .await
            .unwrap()
        {
            Some(Update::Changed(task)) => assert_eq!(task.task(), &expected),
            other => panic!(
                "expected version {} of {}, got {other:?}",
                expected.version, expected.id
            ),
        }
    }
}

pub async fn announcing_queued_work_wakes_queue_listeners(store: &dyn TaskStore) {
    let mut wakeups = store.subscribe_queue().await.unwrap();
    store.announce_queued().await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(5), wakeups.next())
        .await
        .unwrap();
    assert!(woken.is_some());
}

pub async fn owned_tasks_are_the_started_unfinished_ones_of_an_owner(store: &dyn TaskStore) {
    let owner = format!("owner-{}", TaskId::now_v7());
    let running = start_as(store, &insert(store, sleep_task()).await, &owner).await;
    let finished = start_as(store, &insert(store, sleep_task()).await, &owner).await;
    let fence = Fence {
        owner: owner.clone(),
        attempt: 1,
    };
    let report = Report::Fail {
        error: "x".into(),
        result: None,
    };
    advance(store, &finished, Event::Report { fence, report }).await;
    insert(store, sleep_task()).await; // pending: nobody owns it
    let owned: Vec<TaskId> = store
        .owned_by(&owner)
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(owned, vec![running.id]);
}

pub async fn a_replica_that_renews_its_lease_is_not_lost(store: &dyn TaskStore) {
    let owner = format!("owner-{}", TaskId::now_v7());
    // The first renewal takes the lease (whether it says "lapsed" for a new replica is
    // the store's business); the second must find it held.
    store
        .renew_lease(&owner, Duration::from_secs(30))
        .await
        .unwrap();
    let task = insert(store, sleep_task()).await;
    start_as(store, &task, &owner).await;
    assert!(
        store
            .renew_lease(&owner, Duration::from_secs(30))
            .await
            .unwrap(),
        "still held"
    );
    assert!(!store.lost_owners().await.unwrap().contains(&owner));
}

pub async fn worker_kinds_are_remembered(store: &dyn TaskStore) {
    let kind = format!("kind-{}", TaskId::now_v7());
    let long_ago = SystemTime::UNIX_EPOCH;
    assert!(!store.is_worker_kind(&kind, long_ago).await.unwrap());
    store
        .mark_served(std::slice::from_ref(&kind), SystemTime::now())
        .await
        .unwrap();
    assert!(store.is_worker_kind(&kind, long_ago).await.unwrap());
}

/// A learned kind is valid from the time a worker last served it until a TTL later; the
/// test passes the times in (the store holds no clock), so no test waits out a TTL.
pub async fn a_learned_kind_expires_when_no_worker_served_it_since(store: &dyn TaskStore) {
    let served = format!("served-{}", TaskId::now_v7());
    let left = format!("left-{}", TaskId::now_v7());
    // Whole milliseconds: the resolution a store must keep.
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_000);
    let ms = Duration::from_millis;
    store
        .mark_served(&[served.clone(), left.clone()], t0)
        .await
        .unwrap();
    store
        .mark_served(std::slice::from_ref(&served), t0 + ms(5_000))
        .await
        .unwrap();
    // A replica whose clock is behind does not move a kind's time back.
    store
        .mark_served(std::slice::from_ref(&served), t0 + ms(1_000))
        .await
        .unwrap();

    assert!(
        store.is_worker_kind(&left, t0).await.unwrap(),
        "served at t0"
    );
    assert!(
        !store.is_worker_kind(&left, t0 + ms(1)).await.unwrap(),
        "expired: refused before any cleanup ran"
    );
    assert!(
        store.is_worker_kind(&served, t0 + ms(5_000)).await.unwrap(),
        "refreshed at t0 + 5 s"
    );
    assert!(!store.is_worker_kind(&served, t0 + ms(5_001)).await.unwrap());

    assert_eq!(
        store.forget_worker_kinds(t0 + ms(2_000)).await.unwrap(),
        1,
        "only the kind nobody served since"
    );
    assert!(
        !store
            .is_worker_kind(&left, SystemTime::UNIX_EPOCH)
            .await
            .unwrap(),
        "forgotten"
    );
    assert!(store.is_worker_kind(&served, t0).await.unwrap(), "kept");
    assert_eq!(
        store.forget_worker_kinds(t0 + ms(5_000)).await.unwrap(),
        0,
        "a kind served exactly at the cutoff stays"
    );
    // A kind that comes back is learned again.
    store
        .mark_served(std::slice::from_ref(&left), t0 + ms(9_000))
        .await
        .unwrap();
    assert!(store.is_worker_kind(&left, t0 + ms(9_000)).await.unwrap());
    store.mark_served(&[], t0).await.unwrap();
}

/// Declares one `#[tokio::test]` per conformance check, each on a store made by `$make`.
/// A task under `ancestors` (nearest first), started, with `budget`.
async fn running_under(
    store: &dyn TaskStore,
    ancestors: &[TaskId],
    budget: &[(&str, f64)],
) -> Task {
    let task = new_task(NewTask {
        kind: "sleep".into(),
        parent_id: ancestors.first().copied(),
        ancestors: ancestors.to_vec(),
        budget: budget.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        ..NewTask::default()
    });
    start(store, &insert(store, task).await).await
}

fn spent(pairs: &[(&str, f64)]) -> Usage {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// Stores a progress report of `task` that spent `usage`, as its owner would.
async fn spend(store: &dyn TaskStore, task: &Task, usage: Usage) -> (Task, Vec<Spending>) {
    let fence = Fence {
        owner: task.owner.clone(),
        attempt: task.attempt,
    };
    let report = Report::Progress {
        fraction: 0.0,
        message: String::new(),
        partial_result: None,
        usage: usage.clone(),
    };
    let next = apply(task, &Event::Report { fence, report }, SystemTime::now())
        .unwrap()
        .unwrap();
    let (swap, spending) = store.swap_spending(&next, &usage).await.unwrap();
    assert!(matches!(swap, Swap::Swapped | Swap::SwappedChildless));
    (next, spending)
}

pub async fn usage_rolls_up_to_every_ancestor_in_the_same_write(store: &dyn TaskStore) {
    let root = running_under(store, &[], &[("steps", 5.0)]).await;
    let child = running_under(store, &[root.id], &[]).await;
    let grandchild = running_under(store, &[child.id, root.id], &[("tokens", 100.0)]).await;
    let (grandchild, spending) = spend(
        store,
        &grandchild,
        spent(&[("steps", 2.0), ("tokens", 30.0)]),
    )
    .await;
    // Only the tasks with a budget are reported, the task first; each with its own limits.
    assert_eq!(spending.len(), 2);
    assert_eq!(spending[0].task, grandchild.id);
    assert_eq!(spending[0].budget, spent(&[("tokens", 100.0)]));
    assert_eq!(spending[0].before, spent(&[("tokens", 0.0)]));
    assert_eq!(spending[0].after, spent(&[("tokens", 30.0)]));
    assert_eq!(spending[1].task, root.id);
    assert_eq!(spending[1].before, spent(&[("steps", 0.0)]));
    assert_eq!(spending[1].after, spent(&[("steps", 2.0)]));
    let read = |id| async move { store.get(id).await.unwrap().unwrap() };
    let stored = read(grandchild.id).await;
    assert_eq!(stored.usage, spent(&[("steps", 2.0), ("tokens", 30.0)]));
    assert_eq!(stored.subtree_usage, stored.usage);
    assert_eq!(
        read(child.id).await.subtree_usage,
        spent(&[("steps", 2.0), ("tokens", 30.0)])
    );
    let stored_root = read(root.id).await;
    assert_eq!(
        stored_root.subtree_usage,
        spent(&[("steps", 2.0), ("tokens", 30.0)])
    );
    assert!(
        stored_root.usage.values().all(|v| *v == 0.0),
        "its own usage is its own"
    );
    assert_eq!(
        stored_root.version, root.version,
        "no new version for descendants' spending"
    );
    // The ancestor's own writes keep what descendants added.
    let root = spend(store, &root, spent(&[("steps", 1.0)])).await.0;
    assert_eq!(read(root.id).await.subtree_usage["steps"], 3.0);
    let (_, spending) = spend(store, &grandchild, spent(&[("steps", 2.0)])).await;
    assert_eq!(spending.last().unwrap().after["steps"], 5.0);
    assert!(
        spending.last().unwrap().crossed().is_some(),
        "the limit is reached now"
    );
    // `spending` reads the same, in the order asked, without the tasks without a budget.
    let chain = store
        .spending(&[child.id, root.id, grandchild.id])
        .await
        .unwrap();
    let ids: Vec<TaskId> = chain.iter().map(|s| s.task).collect();
    assert_eq!(ids, [root.id, grandchild.id]);
    assert_eq!(chain[0].after["steps"], 5.0);
    assert_eq!(chain[0].before, chain[0].after);
}

pub async fn a_refused_swap_adds_no_usage(store: &dyn TaskStore) {
    let root = running_under(store, &[], &[("steps", 5.0)]).await;
    let child = running_under(store, &[root.id], &[]).await;
    let mut stale = child.clone();
    stale.version += 5;
    let (swap, spending) = store
        .swap_spending(&stale, &spent(&[("steps", 1.0)]))
        .await
        .unwrap();
    assert!(matches!(swap, Swap::Conflict));
    assert!(spending.is_empty());
    assert_eq!(
        store.get(root.id).await.unwrap().unwrap().subtree_usage["steps"],
        0.0
    );
}

pub async fn concurrent_reports_of_many_children_never_lose_an_increment(store: &dyn TaskStore) {
    let root = running_under(store, &[], &[("tokens", 50.0)]).await;
    let mut children = Vec::new();
    for _ in 0..50 {
        children.push(running_under(store, &[root.id], &[]).await);
    }
    let reports = children
        .iter()
        .map(|child| spend(store, child, spent(&[("tokens", 1.0)])));
    let results = futures_util::future::join_all(reports).await;
    let crossings = results
        .iter()
        .filter(|(_, spending)| spending.iter().any(|s| s.crossed().is_some()))
        .count();
    assert_eq!(crossings, 1, "exactly one report reaches the limit");
    let root = store.get(root.id).await.unwrap().unwrap();
    assert_eq!(root.subtree_usage["tokens"], 50.0);
}

pub async fn a_usage_counts_at_most_sixteen_dimensions(store: &dyn TaskStore) {
    let root = running_under(store, &[], &[("tokens", 5.0)]).await;
    let child = running_under(store, &[root.id], &[]).await;
    let many: Usage = (0..20).map(|i| (format!("d{i:02}"), 1.0)).collect();
    let (child, _) = spend(store, &child, many).await;
    let root = store.get(root.id).await.unwrap().unwrap();
    assert_eq!(root.subtree_usage.len(), 16);
    assert!(
        root.subtree_usage.contains_key("tokens"),
        "a budget's dimension is kept"
    );
    assert_eq!(store.get(child.id).await.unwrap().unwrap().usage.len(), 16);
}

pub async fn a_cancelled_session_takes_no_new_task_until_its_mark_expires(store: &dyn TaskStore) {
    let in_session = |session: &str, request_id: &str| {
        new_task(NewTask {
            kind: "sleep".into(),
            session_id: session.into(),
            request_id: request_id.into(),
            ..NewTask::default()
        })
    };
    let first = insert(store, in_session("stopped", "req-1")).await;
    store
        .cancel_session(&first.tenant, "stopped", Duration::from_millis(300))
        .await
        .unwrap();
    assert!(matches!(
        store.create(in_session("stopped", "")).await.unwrap(),
        Created::SessionCancelled
    ));
    // Sessions are per tenant: another tenant's session of the same name goes on.
    let mut elsewhere = in_session("stopped", "");
    elsewhere.tenant = "another-tenant".into();
    assert!(matches!(
        store.create(elsewhere).await.unwrap(),
        Created::New(_) | Created::NewFirst(_)
    ));
    // A retried start still gets the task it created before.
    match store.create(in_session("stopped", "req-1")).await.unwrap() {
        Created::Existing(existing) => assert_eq!(existing.id, first.id),
        other => panic!("expected the existing task, got {other:?}"),
    }
    insert(store, in_session("another", "")).await;
    insert(store, sleep_task()).await;
    // Once the mark has expired the session takes tasks again.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while matches!(
        store.create(in_session("stopped", "")).await.unwrap(),
        Created::SessionCancelled
    ) {
        assert!(
            std::time::Instant::now() < deadline,
            "the mark never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

macro_rules! suite {
    ($make:expr) => {
        $crate::store::conformance::suite!(@tests $make;
            created_tasks_read_back_unchanged,
            a_known_request_id_returns_the_existing_task,
            compare_and_swap_needs_the_previous_version,
            a_terminal_record_is_never_replaced,
            listing_filters_orders_and_pages_active_tasks,
            each_indexed_filter_finds_its_active_tasks_only,
            children_are_found_by_parent,
            ending_a_task_says_whether_it_has_children,
            a_create_says_when_nothing_older_waits,
            the_first_of_a_tenant_is_its_oldest_waiting_task,
            the_pending_queue_is_oldest_first_and_forgets_started_tasks,
            subscribers_see_every_change_in_order_until_the_end,
            a_write_from_another_owner_is_refused_whatever_its_version,
            a_worker_task_moves_to_another_owner_in_the_same_attempt,
            history_replays_the_versions_after_a_given_one,
            history_is_bounded_and_says_when_it_no_longer_reaches_back,
            the_owner_channel_carries_every_change_of_its_tasks_only,
            announcing_queued_work_wakes_queue_listeners,
            owned_tasks_are_the_started_unfinished_ones_of_an_owner,
            a_replica_that_renews_its_lease_is_not_lost,
            worker_kinds_are_remembered,
            a_learned_kind_expires_when_no_worker_served_it_since,
            bounded_checkpoints_keep_the_newest_and_their_dropped_count,
            a_subscribers_copy_is_a_faithful_base_for_the_next_write,
            usage_rolls_up_to_every_ancestor_in_the_same_write,
            a_refused_swap_adds_no_usage,
            concurrent_reports_of_many_children_never_lose_an_increment,
            a_usage_counts_at_most_sixteen_dimensions,
            a_cancelled_session_takes_no_new_task_until_its_mark_expires,
            request_ids_and_the_active_cap_are_per_tenant,
            the_start_bucket_allows_the_burst_then_says_how_long_to_wait,
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
