//! What a replica does for the cluster, in the background: it holds its lease, follows its
//! control channel (the fast hint that a task it owns changed), re-reads its running tasks
//! periodically (so a lost hint delays a cancel but never loses it), dispatches queued
//! work when told, and settles the tasks of replicas whose lease lapsed.
//!
//! With the embedded store the same loops run; the lease never lapses and nobody is lost.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::{Backoff, Engine};

/// How often a replica re-reads the records of the tasks it runs.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// How often a replica looks at the queue without being told (a lost wake-up).
pub const DISPATCH_EVERY: Duration = Duration::from_secs(5);

/// Starts the background loops; they stop when `stop` is cancelled.
///
/// Tasks that this replica id owned in an earlier life cannot be running now (replica ids
/// are unique, so that was this replica before a crash or restart): they are settled
/// first, as the reaper would.
pub async fn start(engine: &Arc<Engine>, lease_ttl: Duration, stop: &CancellationToken) {
    let me = engine.config().replica_id.clone();
    match engine.settle_lost_owner(&me).await {
        Ok(0) => {}
        Ok(settled) => tracing::warn!(
            settled,
            "settled tasks left running by this replica's previous life"
        ),
        Err(err) => tracing::warn!(%err, "cannot settle this replica's earlier tasks yet"),
    }
    if let Err(err) = engine.store().renew_lease(&me, lease_ttl).await {
        tracing::warn!(%err, "cannot take this replica's lease yet");
    }
    spawn_until(stop, follow_control_channel(Arc::clone(engine)));
    spawn_until(stop, follow_queue(Arc::clone(engine)));
    spawn_until(
        stop,
        every(RECONCILE_EVERY, {
            let engine = Arc::clone(engine);
            move || {
                engine.supervisor().nudge_all();
                std::future::ready(())
            }
        }),
    );
    spawn_until(
        stop,
        every(DISPATCH_EVERY, {
            let engine = Arc::clone(engine);
            move || {
                let engine = Arc::clone(&engine);
                async move { engine.dispatch().await }
            }
        }),
    );
    let reaper = Arc::new(Reaper {
        lease_ttl,
        // Give every replica one lease to renew before judging anyone.
        not_before: Mutex::new(Instant::now() + lease_ttl),
    });
    spawn_until(
        stop,
        every(lease_ttl / 3, {
            let (engine, reaper) = (Arc::clone(engine), Arc::clone(&reaper));
            move || keep_lease(Arc::clone(&engine), Arc::clone(&reaper))
        }),
    );
    spawn_until(
        stop,
        every(lease_ttl / 2, {
            let (engine, reaper) = (Arc::clone(engine), Arc::clone(&reaper));
            move || reap(Arc::clone(&engine), Arc::clone(&reaper))
        }),
    );
}

/// When this replica may judge others' leases. After an outage of the store every lease
/// may have lapsed at once; the replicas that are alive renew theirs within a third of a
/// lease, so nobody is judged until one whole lease after the store is back.
struct Reaper {
    lease_ttl: Duration,
    not_before: Mutex<Instant>,
}

impl Reaper {
    fn hold_off(&self) {
        *self.not_before.lock().unwrap_or_else(|p| p.into_inner()) =
            Instant::now() + self.lease_ttl;
    }

    fn may_reap(&self) -> bool {
        Instant::now() >= *self.not_before.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn spawn_until(stop: &CancellationToken, work: impl Future<Output = ()> + Send + 'static) {
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = work => {}
            () = stop.cancelled() => {}
        }
    });
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

/// Routes every change of a task this replica owns to its driver. After a break (Redis
/// restarted), every driver re-reads its record.
async fn follow_control_channel(engine: Arc<Engine>) {
    let me = engine.config().replica_id.clone();
    let mut backoff = Backoff::default();
    loop {
        match engine.store().subscribe_owner(&me).await {
            Ok(mut changes) => {
                backoff = Backoff::default();
                engine.supervisor().nudge_all();
                while let Some(change) = changes.next().await {
                    engine.supervisor().route(change);
                }
            }
            Err(err) => tracing::warn!(%err, "cannot follow this replica's control channel yet"),
        }
        backoff.wait().await;
    }
}

/// Dispatches when any replica queues a task.
async fn follow_queue(engine: Arc<Engine>) {
    let mut backoff = Backoff::default();
    loop {
        match engine.store().subscribe_queue().await {
            Ok(mut wakeups) => {
                backoff = Backoff::default();
                while wakeups.next().await.is_some() {
                    engine.dispatch().await;
                }
            }
            Err(err) => tracing::warn!(%err, "cannot follow the task queue yet"),
        }
        backoff.wait().await;
    }
}

async fn keep_lease(engine: Arc<Engine>, reaper: Arc<Reaper>) {
    let me = &engine.config().replica_id;
    match engine.store().renew_lease(me, reaper.lease_ttl).await {
        Ok(true) => {}
        Ok(false) => {
            // Other replicas may have settled our tasks meanwhile: every driver re-reads
            // its record and stops if its task was settled. A lapse is also the sign of an
            // outage the others went through.
            tracing::warn!("this replica's lease had lapsed; re-reading its tasks");
            reaper.hold_off();
            engine.supervisor().nudge_all();
        }
        Err(err) => {
            reaper.hold_off();
            tracing::warn!(%err, "cannot renew this replica's lease");
        }
    }
}

/// Settles the tasks of every replica whose lease lapsed.
async fn reap(engine: Arc<Engine>, reaper: Arc<Reaper>) {
    if !reaper.may_reap() {
        return;
    }
    let lost = match engine.store().lost_owners().await {
        Ok(lost) => lost,
        Err(err) => {
            reaper.hold_off();
            tracing::debug!(%err, "cannot look for lost replicas");
            return;
        }
    };
    for owner in lost
        .iter()
        .filter(|owner| **owner != engine.config().replica_id)
    {
        match engine.settle_lost_owner(owner).await {
            Ok(settled) => {
                tracing::warn!(%owner, settled, "replica lost its lease; its tasks are settled")
            }
            Err(err) => tracing::warn!(%owner, %err, "cannot settle the tasks of a lost replica"),
        }
    }
}
