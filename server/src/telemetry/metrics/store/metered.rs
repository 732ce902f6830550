//! [`MeteredStore`], the decorator around the backend: every method of every store trait
//! forwarded under its [`Op`], timed and counted, its outcome noted in [`StoreHealth`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use super::{Op, StoreHealth};
use crate::store::{
    ActiveFilter, Created, Membership, StartRates, StoreError, StoreResult, Swap, TaskFeeds,
    TaskQueue, TaskRecords, TaskStore, TenantPlaces, Updates, Wakeups, WorkerKinds,
};
use crate::task::budget::Spending;
use crate::task::{Task, TaskId, Usage};
use crate::telemetry::metrics::metrics;

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

    async fn first_of_its_tenant(&self, task: &Task) -> StoreResult<bool> {
        self.measure(Op::OldestPending, self.inner.first_of_its_tenant(task))
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
