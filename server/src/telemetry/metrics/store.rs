//! The store's metrics, from one decorator around the backend: [`MeteredStore`] times every
//! request of every trait (`reins_store_requests_total{op}`,
//! `reins_store_request_seconds{op}`), counts the failed ones by kind
//! (`reins_store_errors_total{op,kind}`, kind `unavailable` or `corrupt`), and keeps the
//! [`StoreHealth`] that readiness reads: since when every request has found the store
//! unreachable. Only answers that needed the store clear that: a subscription may be
//! served by the replica's own fan-out, and marking no kinds served touches nothing.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{Histograms, STORE_BUCKETS, histograms, metrics};
use crate::store::{
    ActiveFilter, Created, Membership, StoreError, StoreResult, Swap, TaskFeeds, TaskQueue,
    TaskRecords, TaskStore, Updates, Wakeups, WorkerKinds,
};
use crate::task::budget::Spending;
use crate::task::{Task, TaskId, Usage};

/// Every operation, as labelled: the store's trait methods.
const OPS: [&str; 22] = [
    "create",
    "cancel_session",
    "get",
    "compare_and_swap",
    "swap_spending",
    "spending",
    "list_active",
    "children",
    "owned_by",
    "history",
    "subscribe",
    "subscribe_owner",
    "oldest_pending",
    "subscribe_queue",
    "announce_queued",
    "queue_depth",
    "renew_lease",
    "release_lease",
    "lost_owners",
    "mark_served",
    "is_worker_kind",
    "forget_worker_kinds",
];
const ERROR_KINDS: [&str; 2] = ["unavailable", "corrupt"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    op: &'static str,
    kind: &'static str,
}

pub(super) struct StoreMetrics {
    requests: Family<OpLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    seconds: Histograms<OpLabel>,
}

impl StoreMetrics {
    pub(super) fn register(registry: &mut Registry) -> StoreMetrics {
        let metrics = StoreMetrics {
            requests: Family::default(),
            errors: Family::default(),
            seconds: histograms(|| Histogram::new(STORE_BUCKETS)),
        };
        registry.register(
            "reins_store_requests",
            "Requests to the task store, by operation",
            metrics.requests.clone(),
        );
        registry.register(
            "reins_store_errors",
            "Failed requests to the task store, by operation and kind (unavailable, corrupt)",
            metrics.errors.clone(),
        );
        registry.register(
            "reins_store_request_seconds",
            "How long requests to the task store took, by operation",
            metrics.seconds.clone(),
        );
        // Every series at 0 from the start, so that the first error shows in `rate()`.
        for op in OPS {
            drop(metrics.requests.get_or_create(&OpLabel { op }));
            drop(metrics.seconds.get_or_create(&OpLabel { op }));
            for kind in ERROR_KINDS {
                drop(metrics.errors.get_or_create(&ErrorLabels { op, kind }));
            }
        }
        metrics
    }

    fn record(&self, op: &'static str, took: Duration, error: Option<&StoreError>) {
        debug_assert!(OPS.contains(&op), "{op} is missing from OPS");
        let label = OpLabel { op };
        self.requests.get_or_create(&label).inc();
        self.seconds
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        if let Some(error) = error {
            let [unavailable, corrupt] = ERROR_KINDS;
            let kind = match error {
                StoreError::Unavailable(_) => unavailable,
                StoreError::Corrupt(_) => corrupt,
            };
            self.errors.get_or_create(&ErrorLabels { op, kind }).inc();
        }
    }
}

/// Whether the store answers: since when every request has failed as unavailable, if the
/// last one did. A corrupt record is an answer: the store is reachable.
#[derive(Debug, Default)]
pub(crate) struct StoreHealth {
    failing_since: Mutex<Option<Instant>>,
}

impl StoreHealth {
    fn note(&self, reachable: bool) {
        let mut failing_since = self
            .failing_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match (reachable, *failing_since) {
            (true, _) => *failing_since = None,
            (false, None) => *failing_since = Some(Instant::now()),
            (false, Some(_)) => {}
        }
    }

    /// How long the store has been unreachable; zero while it answers.
    pub fn unreachable_for(&self) -> Duration {
        self.failing_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .map_or(Duration::ZERO, |since| since.elapsed())
    }
}

/// A backend whose every request is measured (see the module doc).
pub(crate) struct MeteredStore {
    inner: Arc<dyn TaskStore>,
    health: Arc<StoreHealth>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn TaskStore>) -> MeteredStore {
        MeteredStore {
            inner,
            health: Arc::default(),
        }
    }

    pub fn health(&self) -> Arc<StoreHealth> {
        Arc::clone(&self.health)
    }

    /// Measures a request whose success shows that the store answered.
    async fn measure<T>(
        &self,
        op: &'static str,
        request: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        self.measure_as(op, true, request).await
    }

    /// Measures a request; `answered`: whether its success shows that the store answered.
    async fn measure_as<T>(
        &self,
        op: &'static str,
        answered: bool,
        request: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let start = Instant::now();
        let result = request.await;
        let error = result.as_ref().err();
        metrics().store.record(op, start.elapsed(), error);
        match error {
            Some(StoreError::Unavailable(_)) => self.health.note(false),
            // A corrupt record was read: the store answered.
            Some(StoreError::Corrupt(_)) => self.health.note(true),
            None if answered => self.health.note(true),
            None => {}
        }
        result
    }
}

#[async_trait]
impl TaskRecords for MeteredStore {
    async fn create(&self, task: Task) -> StoreResult<Created> {
        self.measure("create", self.inner.create(task)).await
    }

    async fn cancel_session(&self, session: &str, ttl: Duration) -> StoreResult<()> {
        self.measure("cancel_session", self.inner.cancel_session(session, ttl))
            .await
    }

    async fn get(&self, id: TaskId) -> StoreResult<Option<Task>> {
        self.measure("get", self.inner.get(id)).await
    }

    async fn compare_and_swap(&self, next: &Task) -> StoreResult<Swap> {
        self.measure("compare_and_swap", self.inner.compare_and_swap(next))
            .await
    }

    async fn swap_spending(
        &self,
        next: &Task,
        increment: &Usage,
    ) -> StoreResult<(Swap, Vec<Spending>)> {
        self.measure("swap_spending", self.inner.swap_spending(next, increment))
            .await
    }

    async fn spending(&self, ids: &[TaskId]) -> StoreResult<Vec<Spending>> {
        self.measure("spending", self.inner.spending(ids)).await
    }

    async fn list_active(
        &self,
        filter: &ActiveFilter,
        after: Option<TaskId>,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        self.measure("list_active", self.inner.list_active(filter, after, limit))
            .await
    }

    async fn children(&self, parent: TaskId) -> StoreResult<Vec<Task>> {
        self.measure("children", self.inner.children(parent)).await
    }

    async fn owned_by(&self, owner: &str) -> StoreResult<Vec<Task>> {
        self.measure("owned_by", self.inner.owned_by(owner)).await
    }

    async fn history(&self, id: TaskId, after_version: u64) -> StoreResult<Option<Vec<Task>>> {
        self.measure("history", self.inner.history(id, after_version))
            .await
    }
}

#[async_trait]
impl TaskFeeds for MeteredStore {
    async fn subscribe(&self, id: TaskId) -> StoreResult<Updates> {
        self.measure_as("subscribe", false, self.inner.subscribe(id))
            .await
    }

    async fn subscribe_owner(&self, owner: &str) -> StoreResult<Updates> {
        self.measure_as("subscribe_owner", false, self.inner.subscribe_owner(owner))
            .await
    }
}

#[async_trait]
impl TaskQueue for MeteredStore {
    async fn oldest_pending(&self, after: Option<TaskId>, limit: usize) -> StoreResult<Vec<Task>> {
        self.measure("oldest_pending", self.inner.oldest_pending(after, limit))
            .await
    }

    async fn subscribe_queue(&self) -> StoreResult<Wakeups> {
        self.measure_as("subscribe_queue", false, self.inner.subscribe_queue())
            .await
    }

    async fn announce_queued(&self) -> StoreResult<()> {
        self.measure("announce_queued", self.inner.announce_queued())
            .await
    }

    async fn queue_depth(&self) -> StoreResult<u64> {
        self.measure("queue_depth", self.inner.queue_depth()).await
    }
}

#[async_trait]
impl Membership for MeteredStore {
    async fn renew_lease(&self, replica: &str, ttl: Duration) -> StoreResult<bool> {
        self.measure("renew_lease", self.inner.renew_lease(replica, ttl))
            .await
    }

    async fn release_lease(&self, replica: &str) -> StoreResult<()> {
        self.measure("release_lease", self.inner.release_lease(replica))
            .await
    }

    async fn lost_owners(&self) -> StoreResult<Vec<String>> {
        self.measure("lost_owners", self.inner.lost_owners()).await
    }
}

#[async_trait]
impl WorkerKinds for MeteredStore {
    async fn mark_served(&self, kinds: &[String], at: SystemTime) -> StoreResult<()> {
        let answered = !kinds.is_empty();
        self.measure_as("mark_served", answered, self.inner.mark_served(kinds, at))
            .await
    }

    async fn is_worker_kind(&self, kind: &str, since: SystemTime) -> StoreResult<bool> {
        self.measure("is_worker_kind", self.inner.is_worker_kind(kind, since))
            .await
    }

    async fn forget_worker_kinds(&self, since: SystemTime) -> StoreResult<usize> {
        self.measure("forget_worker_kinds", self.inner.forget_worker_kinds(since))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;
    use crate::store::memory::MemoryStore;

    // The decorator changes nothing a backend does.
    conformance::suite!(Arc::new(MeteredStore::new(Arc::new(MemoryStore::new(
        Duration::from_secs(3600)
    )))));

    #[test]
    fn the_store_is_unreachable_from_the_first_failure_until_an_answer() {
        let health = StoreHealth::default();
        let since = || *health.failing_since.lock().unwrap();
        assert_eq!(health.unreachable_for(), Duration::ZERO);
        health.note(false);
        let first = since().expect("failing after a failure");
        health.note(false);
        assert_eq!(since(), Some(first), "measured from the first failure");
        health.note(true);
        assert_eq!(since(), None);
        assert_eq!(health.unreachable_for(), Duration::ZERO);
    }
}
