//! The store's metrics, from one decorator around the backend: [`MeteredStore`] times every
//! request of every trait (`reins_store_requests_total{op}`,
//! `reins_store_request_seconds{op}`), counts the failed ones by kind
//! (`reins_store_errors_total{op,kind}`, kind `unavailable` or `corrupt`), and keeps the
//! [`StoreHealth`] that readiness reads: since when every request has found the store
//! unreachable. Only answers that needed the store clear that: a subscription may be
//! served by the replica's own fan-out, and marking no kinds served touches nothing.
//!
//! The decorator is `metered.rs`; this module holds what it records: the series of each
//! operation and the store's health.

mod metered;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub(crate) use metered::MeteredStore;

use super::{Histograms, STORE_BUCKETS, histograms};
use crate::store::StoreError;

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

#[cfg(test)]
mod tests;
