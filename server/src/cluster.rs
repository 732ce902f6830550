//! What a replica does for the cluster, in the background: it holds its lease, follows its
//! control channel (the fast hint that a task it owns changed), re-reads its running tasks
//! periodically (so a lost hint delays a cancel but never loses it), dispatches queued
//! work when told, settles the tasks of replicas whose lease lapsed, and keeps the kinds
//! its workers serve from expiring (`engine::kinds`).
//!
//! With the embedded store the same loops run; the lease never lapses and nobody is lost.
//! Every loop runs on the replica's [`Background`], which stops and waits for them at
//! shutdown; loops that lose the store reconnect with jittered backoff.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::background::{Background, store_backoff, wait};
use crate::engine::Engine;
use crate::store::{Membership, Store, TaskFeeds, TaskQueue, Wakeups};
use crate::telemetry::metrics::metrics;

/// How often a replica re-reads the records of the tasks it runs.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// How often a replica looks at the queue without being told (a lost wake-up).
pub const DISPATCH_EVERY: Duration = Duration::from_secs(5);
/// How long start-up waits for the queue's wake-ups before serving without them.
const FIRST_SUBSCRIBE_WITHIN: Duration = Duration::from_secs(2);

/// The parts of the store and the engine the cluster loops work with.
struct Replica {
    engine: Arc<Engine>,
    feeds: Arc<dyn TaskFeeds>,
    queue: Arc<dyn TaskQueue>,
    membership: Arc<dyn Membership>,
    lease_ttl: Duration,
    /// When this replica may judge others' leases. After an outage of the store every
    /// lease may have lapsed at once; the replicas that are alive renew theirs within a
    /// third of a lease, so nobody is judged until one whole lease after the store is back.
    reap_not_before: Mutex<Instant>,
}

/// Starts the background loops on `background`.
///
/// Tasks that this replica id owned in an earlier life cannot be running now (replica ids
/// are unique, so that was this replica before a crash or restart): they are settled
/// first, as the reaper would.
pub async fn start(
    engine: &Arc<Engine>,
    store: &Store,
    lease_ttl: Duration,
    background: &Background,
) {
    let replica = Arc::new(Replica {
        engine: Arc::clone(engine),
        feeds: Arc::clone(&store.feeds),
        queue: Arc::clone(&store.queue),
        membership: Arc::clone(&store.membership),
        lease_ttl,
        // Give every replica one lease to renew before judging anyone.
        reap_not_before: Mutex::new(Instant::now() + lease_ttl),
    });
    let me = engine.replica_id().to_owned();
    match engine.settle_lost_owner(&me).await {
        Ok(0) => {}
        Ok(settled) => tracing::warn!(
            settled,
            "settled tasks left running by this replica's previous life"
        ),
        Err(err) => tracing::warn!(%err, "cannot settle this replica's earlier tasks yet"),
    }
    if let Err(err) = replica.membership.renew_lease(&me, lease_ttl).await {
        tracing::warn!(%err, "cannot take this replica's lease yet");
    }
    background.spawn(Arc::clone(&replica).follow_control_channel());
    // Subscribed before the server serves: a task another replica queues from then on
    // wakes this one (missed wake-ups of a later reconnect are told by the fan-out).
    // (Bounded: with the store away the loop subscribes when it is back.)
    let wakeups = tokio::time::timeout(FIRST_SUBSCRIBE_WITHIN, replica.queue.subscribe_queue())
        .await
        .ok()
        .and_then(Result::ok);
    background.spawn(Arc::clone(&replica).follow_queue(wakeups));
    background.spawn(every(RECONCILE_EVERY, {
        let engine = Arc::clone(engine);
        move || {
            engine.reread_running();
            std::future::ready(())
        }
    }));
    background.spawn(every(DISPATCH_EVERY, {
        let engine = Arc::clone(engine);
        move || {
            engine.wake_dispatch();
            std::future::ready(())
        }
    }));
    background.spawn(every(lease_ttl / 3, {
        let replica = Arc::clone(&replica);
        move || Arc::clone(&replica).keep_lease()
    }));
    background.spawn(every(engine.refresh_worker_kinds_every(lease_ttl), {
        let engine = Arc::clone(engine);
        move || {
            let engine = Arc::clone(&engine);
            async move { engine.keep_worker_kinds().await }
        }
    }));
    background.spawn(every(lease_ttl / 2, {
        let replica = Arc::clone(&replica);
        move || Arc::clone(&replica).reap()
    }));
}

async fn every<F, Fut>(period: Duration, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    // The first tick comes one period from now: at start-up nothing is overdue, and an
    // immediate look at the queue would race the replica that is starting a task there.
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        tick().await;
    }
}

impl Replica {
    fn hold_off_reaping(&self) {
        *self
            .reap_not_before
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now() + self.lease_ttl;
    }

    fn may_reap(&self) -> bool {
        Instant::now()
            >= *self
                .reap_not_before
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Routes every change of a task this replica owns to its driver. After a break (Redis
    /// restarted), every driver re-reads its record.
    async fn follow_control_channel(self: Arc<Self>) {
        let mut backoff = store_backoff();
        loop {
            match self.feeds.subscribe_owner(self.engine.replica_id()).await {
                Ok(mut changes) => {
                    backoff = store_backoff();
                    self.engine.reread_running();
                    while let Some(change) = changes.next().await {
                        self.engine.route_owned_change(change);
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, "cannot follow this replica's control channel yet")
                }
            }
            wait(&mut backoff).await;
        }
    }

    /// Dispatches when any replica queues a task; starts from `subscribed` if given.
    async fn follow_queue(self: Arc<Self>, mut subscribed: Option<Wakeups>) {
        let mut backoff = store_backoff();
        loop {
            let subscription = match subscribed.take() {
                Some(wakeups) => Ok(wakeups),
                None => self.queue.subscribe_queue().await,
            };
            match subscription {
                Ok(mut wakeups) => {
                    backoff = store_backoff();
                    while wakeups.next().await.is_some() {
                        self.engine.wake_dispatch();
                    }
                }
                Err(err) => tracing::warn!(%err, "cannot follow the task queue yet"),
            }
            wait(&mut backoff).await;
        }
    }

    async fn keep_lease(self: Arc<Self>) {
        let me = self.engine.replica_id();
        match self.membership.renew_lease(me, self.lease_ttl).await {
            Ok(true) => {}
            Ok(false) => {
                // Other replicas may have settled our tasks meanwhile: every driver re-reads
                // its record and stops if its task was settled. A lapse is also the sign of
                // an outage the others went through.
                tracing::warn!("this replica's lease had lapsed; re-reading its tasks");
                self.hold_off_reaping();
                self.engine.reread_running();
            }
            Err(err) => {
                self.hold_off_reaping();
                tracing::warn!(%err, "cannot renew this replica's lease");
            }
        }
    }

    /// Settles the tasks of every replica whose lease lapsed.
    async fn reap(self: Arc<Self>) {
        if !self.may_reap() {
            return;
        }
        let lost = match self.membership.lost_owners().await {
            Ok(lost) => lost,
            Err(err) => {
                self.hold_off_reaping();
                tracing::debug!(%err, "cannot look for lost replicas");
                return;
            }
        };
        for owner in lost
            .iter()
            .filter(|owner| **owner != self.engine.replica_id())
        {
            match self.engine.settle_lost_owner(owner).await {
                Ok(settled) => {
                    if settled > 0 {
                        metrics().replica_lost();
                    }
                    tracing::warn!(%owner, settled, "replica lost its lease; its tasks are settled")
                }
                Err(err) => {
                    tracing::warn!(%owner, %err, "cannot settle the tasks of a lost replica")
                }
            }
        }
    }
}
