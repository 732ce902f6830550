//! A report whose write lands while its reply is lost (Redis killed, or the link cut, at
//! that instant) is retried, and the retry must find its own write instead of applying the
//! report again. The store is the real memory store behind a wrapper that loses one reply.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::json;

use crate::engine::transitions::Transitions;
use crate::port::TaskPort;
use crate::store::memory::MemoryStore;
use crate::store::{ActiveFilter, Created, StoreError, StoreResult, Swap, TaskQueue, TaskRecords};
use crate::task::budget::Spending;
use crate::task::state_machine::{Event, Fence, Report};
use crate::task::{CheckpointLimits, NewTask, Task, TaskId, Usage};

/// The memory store, except that the next compare-and-set, once armed, is stored and then
/// answered with UNAVAILABLE, as when the connection breaks before the reply arrives.
struct LosesOneReply {
    store: Arc<MemoryStore>,
    armed: AtomicBool,
}

impl LosesOneReply {
    fn lost<T>(&self, stored: StoreResult<T>) -> StoreResult<T> {
        let stored = stored?;
        if self.armed.swap(false, Ordering::SeqCst) {
            let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reply lost");
            return Err(StoreError::Unavailable(redis::RedisError::from(io)));
        }
        Ok(stored)
    }
}

#[async_trait]
impl TaskRecords for LosesOneReply {
    async fn create_within(&self, task: Task, max_active: Option<u64>) -> StoreResult<Created> {
        self.store.create_within(task, max_active).await
    }
    async fn cancel_session(&self, tenant: &str, session: &str, ttl: Duration) -> StoreResult<()> {
        self.store.cancel_session(tenant, session, ttl).await
    }
    async fn get(&self, id: TaskId) -> StoreResult<Option<Task>> {
        self.store.get(id).await
    }
    async fn compare_and_swap(&self, next: &Task) -> StoreResult<Swap> {
        self.lost(self.store.compare_and_swap(next).await)
    }
    async fn swap_spending(
        &self,
        next: &Task,
        increment: &Usage,
    ) -> StoreResult<(Swap, Vec<Spending>)> {
        self.lost(self.store.swap_spending(next, increment).await)
    }
    async fn spending(&self, ids: &[TaskId]) -> StoreResult<Vec<Spending>> {
        self.store.spending(ids).await
    }
    async fn list_active(
        &self,
        filter: &ActiveFilter,
        after: Option<TaskId>,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        self.store.list_active(filter, after, limit).await
    }
    async fn children(&self, parent: TaskId) -> StoreResult<Vec<Task>> {
        self.store.children(parent).await
    }
    async fn owned_by(&self, owner: &str) -> StoreResult<Vec<Task>> {
        self.store.owned_by(owner).await
    }
    async fn history(&self, id: TaskId, after_version: u64) -> StoreResult<Option<Vec<Task>>> {
        self.store.history(id, after_version).await
    }
}

/// A running task with a budget of 10 tokens, and the transitions over the lossy store.
async fn running_task() -> (Arc<LosesOneReply>, Transitions, Task) {
    let store = Arc::new(MemoryStore::new(Duration::from_secs(3600)));
    let lossy = Arc::new(LosesOneReply {
        store: Arc::clone(&store),
        armed: AtomicBool::new(false),
    });
    let transitions = Transitions::new(
        "r1".to_owned(),
        Arc::clone(&lossy) as Arc<dyn TaskRecords>,
        store as Arc<dyn TaskQueue>,
        Duration::from_secs(5),
        crate::limits::tests::defaults(),
        CheckpointLimits::default(),
    );
    let task = Task::new(
        TaskId::now_v7(),
        NewTask {
            kind: "sleep".into(),
            budget: Usage::from([("tokens".to_owned(), 10.0)]),
            ..NewTask::default()
        },
        SystemTime::now(),
    );
    let (Created::NewFirst(task) | Created::New(task)) = lossy.create(task).await.unwrap() else {
        panic!("created")
    };
    let event = Event::Start {
        owner: "r1".to_owned(),
        worker: String::new(),
    };
    let task = transitions
        .apply(task.id, event)
        .await
        .unwrap()
        .into_current();
    (lossy, transitions, task)
}

fn progress(tokens: f64) -> Report {
    Report::Progress {
        fraction: 0.5,
        message: "half".into(),
        partial_result: Some(json!({"step": 1})),
        usage: Usage::from([("tokens".to_owned(), tokens)]),
    }
}

/// A progress report spending `tokens` on a running task whose write's reply is lost:
/// the transitions, the task before it and what the report answered.
async fn report_losing_its_reply(tokens: f64) -> (Transitions, Task, Task) {
    let (lossy, transitions, task) = running_task().await;
    let fence = Fence {
        owner: "r1".to_owned(),
        attempt: task.attempt,
    };
    lossy.armed.store(true, Ordering::SeqCst);
    let reported = transitions
        .report(task.id, &fence, progress(tokens))
        .await
        .unwrap();
    assert!(
        !lossy.armed.load(Ordering::SeqCst),
        "the reply was lost once"
    );
    (transitions, task, reported)
}

#[tokio::test]
async fn a_report_whose_reply_was_lost_is_stored_once() {
    let (transitions, task, reported) = report_losing_its_reply(4.0).await;
    assert_eq!(
        reported.version,
        task.version + 1,
        "one new version, not two"
    );
    let stored = transitions.check(task.id).await.unwrap();
    assert_eq!(
        stored.partial_results.values().len(),
        1,
        "one checkpoint: {stored:?}"
    );
    assert_eq!(stored.usage.get("tokens"), Some(&4.0), "usage counted once");
    assert_eq!(stored.subtree_usage.get("tokens"), Some(&4.0));
}

#[tokio::test]
async fn a_lost_reply_of_a_report_that_crossed_its_budget_still_stops_the_task() {
    let (transitions, task, reported) = report_losing_its_reply(12.0).await;
    assert_eq!(reported.usage.get("tokens"), Some(&12.0), "counted once");
    let stored = transitions.check(task.id).await.unwrap();
    assert!(
        stored.cancel.is_some(),
        "the budget it crossed cancels the task: {stored:?}"
    );
}
