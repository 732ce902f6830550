//! The store's metrics, from one decorator around the backend: [`MeteredStore`] times every
//! request of every trait (`reins_store_requests_total{op}`,
//! `reins_store_request_seconds{op}`), counts the failed ones by kind
//! (`reins_store_errors_total{op,kind}`, kind `unavailable` or `corrupt`), and keeps the
//! [`StoreHealth`] that readiness reads: since when every request has found the store
//! unreachable. Only answers that needed the store clear that: a subscription may be
//! served by the replica's own fan-out, and marking no kinds served touches nothing.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{Histograms, STORE_BUCKETS, histograms, metrics};
use crate::store::{
    ActiveFilter, Created, Membership, StartRates, StoreError, StoreResult, Swap, TaskFeeds,
    TaskQueue, TaskRecords, TaskStore, TenantPlaces, Updates, Wakeups, WorkerKinds,
};
use crate::task::budget::Spending;
use crate::task::{Task, TaskId, Usage};

/// Every store operation (a method of the store's traits), as labelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Create,
    CancelSession,
    Get,
    CompareAndSwap,
    SwapSpending,
    Spending,
    ListActive,
    Children,
    OwnedBy,
    History,
    Subscribe,
    SubscribeOwner,
    OldestPending,
    PendingTenants,
    SubscribeQueue,
    AnnounceQueued,
    QueueDepth,
    RenewLease,
    ReleaseLease,
    LostOwners,
    MarkServed,
    IsWorkerKind,
    ForgetWorkerKinds,
    TakeStart,
    HoldPlace,
    ReleasePlace,
    RefreshPlaces,
}

impl Op {
    const ALL: [Op; 27] = [
        Op::Create,
        Op::CancelSession,
        Op::Get,
        Op::CompareAndSwap,
        Op::SwapSpending,
        Op::Spending,
        Op::ListActive,
        Op::Children,
        Op::OwnedBy,
        Op::History,
        Op::Subscribe,
        Op::SubscribeOwner,
        Op::OldestPending,
        Op::PendingTenants,
        Op::SubscribeQueue,
        Op::AnnounceQueued,
        Op::QueueDepth,
        Op::RenewLease,
        Op::ReleaseLease,
        Op::LostOwners,
        Op::MarkServed,
        Op::IsWorkerKind,
        Op::ForgetWorkerKinds,
        Op::TakeStart,
        Op::HoldPlace,
        Op::ReleasePlace,
        Op::RefreshPlaces,
    ];

    fn label(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::CancelSession => "cancel_session",
            Op::Get => "get",
            Op::CompareAndSwap => "compare_and_swap",
            Op::SwapSpending => "swap_spending",
            Op::Spending => "spending",
            Op::ListActive => "list_active",
            Op::Children => "children",
            Op::OwnedBy => "owned_by",
            Op::History => "history",
            Op::Subscribe => "subscribe",
            Op::SubscribeOwner => "subscribe_owner",
            Op::OldestPending => "oldest_pending",
            Op::PendingTenants => "pending_tenants",
            Op::SubscribeQueue => "subscribe_queue",
            Op::AnnounceQueued => "announce_queued",
            Op::QueueDepth => "queue_depth",
            Op::RenewLease => "renew_lease",
            Op::ReleaseLease => "release_lease",
            Op::LostOwners => "lost_owners",
            Op::MarkServed => "mark_served",
            Op::IsWorkerKind => "is_worker_kind",
            Op::ForgetWorkerKinds => "forget_worker_kinds",
            Op::TakeStart => "take_start",
            Op::HoldPlace => "hold_place",
            Op::ReleasePlace => "release_place",
            Op::RefreshPlaces => "refresh_places",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    op: &'static str,
    kind: &'static str,
}

/// The series of one operation, looked up once: recording a request touches no map.
struct OpSeries {
    requests: Counter,
    seconds: Histogram,
    unavailable: Counter,
    corrupt: Counter,
}

pub(super) struct StoreMetrics {
    /// By `Op as usize`; every series exists at 0 from the start, so that the first error
    /// shows in `rate()`.
    ops: Vec<OpSeries>,
}

impl StoreMetrics {
    pub(super) fn register(registry: &mut Registry) -> StoreMetrics {
        let requests = Family::<OpLabel, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let seconds: Histograms<OpLabel> = histograms(|| Histogram::new(STORE_BUCKETS));
        registry.register(
            "reins_store_requests",
            "Requests to the task store, by operation",
            requests.clone(),
        );
        registry.register(
            "reins_store_errors",
            "Failed requests to the task store, by operation and kind (unavailable, corrupt)",
            errors.clone(),
        );
        registry.register(
            "reins_store_request_seconds",
            "How long requests to the task store took, by operation",
            seconds.clone(),
        );
        let ops = Op::ALL
            .iter()
            .map(|op| {
                let op = op.label();
                let error = |kind| errors.get_or_create_owned(&ErrorLabels { op, kind });
                OpSeries {
                    requests: requests.get_or_create_owned(&OpLabel { op }),
                    seconds: seconds.get_or_create_owned(&OpLabel { op }),
                    unavailable: error("unavailable"),
                    corrupt: error("corrupt"),
                }
            })
            .collect();
        StoreMetrics { ops }
    }

    fn record(&self, op: Op, took: Duration, error: Option<&StoreError>) {
        let series = &self.ops[op as usize];
        series.requests.inc();
        series.seconds.observe(took.as_secs_f64());
        if let Some(error) = error {
            let errors = match error {
                StoreError::Unavailable(_) => &series.unavailable,
                StoreError::Corrupt(_) => &series.corrupt,
            };
            errors.inc();
        }
    }
}

/// Whether the store answers: since when every request has failed as unavailable, if the
/// last one did. A corrupt record is an answer: the store is reachable. Lock-free: every
/// store request notes its outcome, and an answer while nothing failed is one load.
#[derive(Debug)]
pub(crate) struct StoreHealth {
    /// What `failing_since` counts from.
    origin: Instant,
    /// Nanoseconds from `origin` to the first failure of the current outage (at least 1);
    /// 0 while the store answers.
    failing_since: AtomicU64,
}

impl Default for StoreHealth {
    fn default() -> StoreHealth {
        StoreHealth {
            origin: Instant::now(),
            failing_since: AtomicU64::new(0),
        }
    }
}

impl StoreHealth {
    fn note(&self, reachable: bool) {
        if reachable {
            if self.failing_since.load(Ordering::Relaxed) != 0 {
                self.failing_since.store(0, Ordering::Relaxed);
            }
        } else {
            let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
            // Only the first failure of an outage sets it.
            let _ = self.failing_since.compare_exchange(
                0,
                now.max(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// How long the store has been unreachable; zero while it answers.
    pub fn unreachable_for(&self) -> Duration {
        match self.failing_since.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => self
                .origin
                .elapsed()
                .saturating_sub(Duration::from_nanos(since)),
        }
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
        op: Op,
        request: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        self.measure_as(op, true, request).await
    }

    /// Measures a request; `answered`: whether its success shows that the store answered.
    async fn measure_as<T>(
        &self,
        op: Op,
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
    async fn create_within(&self, task: Task, max_active: Option<u64>) -> StoreResult<Created> {
        self.measure(Op::Create, self.inner.create_within(task, max_active))
            .await
    }

    async fn cancel_session(&self, tenant: &str, session: &str, ttl: Duration) -> StoreResult<()> {
        self.measure(
            Op::CancelSession,
            self.inner.cancel_session(tenant, session, ttl),
        )
        .await
    }

    async fn get(&self, id: TaskId) -> StoreResult<Option<Task>> {
        self.measure(Op::Get, self.inner.get(id)).await
    }

    async fn compare_and_swap(&self, next: &Task) -> StoreResult<Swap> {
        self.measure(Op::CompareAndSwap, self.inner.compare_and_swap(next))
            .await
    }

    async fn swap_spending(
        &self,
        next: &Task,
        increment: &Usage,
    ) -> StoreResult<(Swap, Vec<Spending>)> {
        self.measure(Op::SwapSpending, self.inner.swap_spending(next, increment))
            .await
    }

    async fn spending(&self, ids: &[TaskId]) -> StoreResult<Vec<Spending>> {
        self.measure(Op::Spending, self.inner.spending(ids)).await
    }

    async fn list_active(
        &self,
        filter: &ActiveFilter,
        after: Option<TaskId>,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        self.measure(Op::ListActive, self.inner.list_active(filter, after, limit))
            .await
    }

    async fn children(&self, parent: TaskId) -> StoreResult<Vec<Task>> {
        self.measure(Op::Children, self.inner.children(parent))
            .await
    }

    async fn owned_by(&self, owner: &str) -> StoreResult<Vec<Task>> {
        self.measure(Op::OwnedBy, self.inner.owned_by(owner)).await
    }

    async fn history(&self, id: TaskId, after_version: u64) -> StoreResult<Option<Vec<Task>>> {
        self.measure(Op::History, self.inner.history(id, after_version))
            .await
    }
}

#[async_trait]
impl TaskFeeds for MeteredStore {
    async fn subscribe(&self, id: TaskId) -> StoreResult<Updates> {
        self.measure_as(Op::Subscribe, false, self.inner.subscribe(id))
            .await
    }

    async fn subscribe_owner(&self, owner: &str) -> StoreResult<Updates> {
        self.measure_as(Op::SubscribeOwner, false, self.inner.subscribe_owner(owner))
            .await
    }
}

#[async_trait]
impl TaskQueue for MeteredStore {
    async fn oldest_pending(&self, after: Option<TaskId>, limit: usize) -> StoreResult<Vec<Task>> {
        self.measure(Op::OldestPending, self.inner.oldest_pending(after, limit))
            .await
    }

    async fn pending_tenants(&self) -> StoreResult<Vec<String>> {
        self.measure(Op::PendingTenants, self.inner.pending_tenants())
            .await
    }

    async fn oldest_pending_of(
        &self,
        tenant: &str,
        after: Option<TaskId>,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        self.measure(
            Op::OldestPending,
            self.inner.oldest_pending_of(tenant, after, limit),
        )
        .await
    }

    async fn subscribe_queue(&self) -> StoreResult<Wakeups> {
        self.measure_as(Op::SubscribeQueue, false, self.inner.subscribe_queue())
            .await
    }

    async fn announce_queued(&self) -> StoreResult<()> {
        self.measure(Op::AnnounceQueued, self.inner.announce_queued())
            .await
    }

    async fn queue_depth(&self) -> StoreResult<u64> {
        self.measure(Op::QueueDepth, self.inner.queue_depth()).await
    }
}

#[async_trait]
impl Membership for MeteredStore {
    async fn renew_lease(&self, replica: &str, ttl: Duration) -> StoreResult<bool> {
        self.measure(Op::RenewLease, self.inner.renew_lease(replica, ttl))
            .await
    }

    async fn release_lease(&self, replica: &str) -> StoreResult<()> {
        self.measure(Op::ReleaseLease, self.inner.release_lease(replica))
            .await
    }

    async fn lost_owners(&self) -> StoreResult<Vec<String>> {
        self.measure(Op::LostOwners, self.inner.lost_owners()).await
    }
}

#[async_trait]
impl WorkerKinds for MeteredStore {
    async fn mark_served(&self, kinds: &[String], at: SystemTime) -> StoreResult<()> {
        let answered = !kinds.is_empty();
        self.measure_as(Op::MarkServed, answered, self.inner.mark_served(kinds, at))
            .await
    }

    async fn is_worker_kind(&self, kind: &str, since: SystemTime) -> StoreResult<bool> {
        self.measure(Op::IsWorkerKind, self.inner.is_worker_kind(kind, since))
            .await
    }

    async fn forget_worker_kinds(&self, since: SystemTime) -> StoreResult<usize> {
        self.measure(Op::ForgetWorkerKinds, self.inner.forget_worker_kinds(since))
            .await
    }
}

#[async_trait]
impl StartRates for MeteredStore {
    async fn take_start(
        &self,
        tenant: &str,
        per_second: f64,
        burst: u64,
    ) -> StoreResult<Option<Duration>> {
        self.measure(
            Op::TakeStart,
            self.inner.take_start(tenant, per_second, burst),
        )
        .await
    }
}

#[async_trait]
impl TenantPlaces for MeteredStore {
    async fn hold(
        &self,
        what: &str,
        tenant: &str,
        holder: &str,
        max: u64,
        ttl: Duration,
    ) -> StoreResult<bool> {
        self.measure(
            Op::HoldPlace,
            self.inner.hold(what, tenant, holder, max, ttl),
        )
        .await
    }

    async fn release(&self, what: &str, tenant: &str, holder: &str) -> StoreResult<()> {
        self.measure(Op::ReleasePlace, self.inner.release(what, tenant, holder))
            .await
    }

    async fn refresh(
        &self,
        what: &str,
        tenant: &str,
        holders: &[String],
        ttl: Duration,
    ) -> StoreResult<()> {
        self.measure(
            Op::RefreshPlaces,
            self.inner.refresh(what, tenant, holders, ttl),
        )
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
        let since = || health.failing_since.load(Ordering::Relaxed);
        assert_eq!(health.unreachable_for(), Duration::ZERO);
        health.note(false);
        let first = since();
        assert_ne!(first, 0, "failing after a failure");
        health.note(false);
        assert_eq!(since(), first, "measured from the first failure");
        health.note(true);
        assert_eq!(since(), 0);
        assert_eq!(health.unreachable_for(), Duration::ZERO);
    }

    #[test]
    fn every_operation_has_its_series() {
        assert!(Op::ALL.iter().enumerate().all(|(i, op)| *op as usize == i));
        assert_eq!(metrics().store.ops.len(), Op::ALL.len());
    }
}
