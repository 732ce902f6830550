//! Readiness: whether this replica can serve now, told the same way to gRPC health (`""`
//! and every service) and to `GET /readyz`. A replica is ready unless
//!
//! - it is draining (shutdown has begun), or
//! - the task store has been unreachable for longer than [`STORE_OUTAGE`]: every request
//!   since the first failure failed as unavailable. A blip (one timed-out command, a Redis
//!   failover) does not take replicas out of the balancer; a real outage does, and the
//!   replica is ready again as soon as a request succeeds (the lease is renewed every third
//!   of `--lease-ttl`, so an idle replica notices within that).
//!
//! Liveness (`GET /healthz`) is not decided here: it never depends on the store, so an
//! outage of Redis does not make Kubernetes restart every replica.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::telemetry::metrics::StoreHealth;

/// How long the store may stay unreachable before the replica says it is not ready.
pub const STORE_OUTAGE: Duration = Duration::from_secs(3);
/// How often gRPC health is brought in line with [`Readiness::is_ready`].
const CHECK_EVERY: Duration = Duration::from_millis(250);

pub(crate) struct Readiness {
    draining: AtomicBool,
    store: Arc<StoreHealth>,
}

impl Readiness {
    pub fn new(store: Arc<StoreHealth>) -> Readiness {
        Readiness {
            draining: AtomicBool::new(false),
            store,
        }
    }

    /// Shutdown has begun: not ready from now on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst) && self.store.unreachable_for() <= STORE_OUTAGE
    }

    /// Keeps gRPC health for `services` in line with readiness (run it on the replica's
    /// background). Readiness is two cheap values, polled: a change is told within
    /// [`CHECK_EVERY`].
    pub async fn report(
        self: Arc<Self>,
        health: HealthReporter,
        services: &'static [&'static str],
    ) {
        let mut told = self.tell(&health, services).await;
        let mut ticks = tokio::time::interval(CHECK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if self.is_ready() != told {
                told = self.tell(&health, services).await;
                tracing::warn!(ready = told, "readiness changed");
            }
        }
    }

    /// Sets gRPC health for `services` to what readiness says now, and returns it.
    pub async fn tell(&self, health: &HealthReporter, services: &[&str]) -> bool {
        let ready = self.is_ready();
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in services {
            health.set_service_status(*service, status).await;
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn draining_tells_every_service_not_serving() {
        let readiness = Readiness::new(Arc::default());
        let (health, _service) = tonic_health::server::health_reporter();
        assert!(readiness.tell(&health, &["", "reins.v1.TaskService"]).await);
        readiness.drain();
        assert!(!readiness.is_ready());
        assert!(!readiness.tell(&health, &["", "reins.v1.TaskService"]).await);
    }
}
