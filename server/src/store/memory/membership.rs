//! The embedded store's view of the cluster ([`Membership`]) and of the kinds workers
//! serve ([`WorkerKinds`]).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::MemoryStore;
use crate::store::{Membership, StoreResult, WorkerKinds};

/// One process is the whole cluster: its lease never lapses and nobody is ever lost.
#[async_trait]
impl Membership for MemoryStore {
    async fn renew_lease(&self, _replica: &str, _ttl: Duration) -> StoreResult<bool> {
        Ok(true)
    }

    async fn release_lease(&self, _replica: &str) -> StoreResult<()> {
        Ok(())
    }

    async fn lost_owners(&self) -> StoreResult<Vec<String>> {
        Ok(Vec::new())
    }
}

#[async_trait]
impl WorkerKinds for MemoryStore {
    async fn mark_served(&self, kinds: &[String], at: SystemTime) -> StoreResult<()> {
        let mut inner = self.lock();
        for kind in kinds {
            let last_served = inner.worker_kinds.entry(kind.clone()).or_insert(at);
            *last_served = (*last_served).max(at);
        }
        Ok(())
    }

    async fn is_worker_kind(&self, kind: &str, since: SystemTime) -> StoreResult<bool> {
        Ok(self
            .lock()
            .worker_kinds
            .get(kind)
            .is_some_and(|&last_served| last_served >= since))
    }

    async fn forget_worker_kinds(&self, since: SystemTime) -> StoreResult<usize> {
        let mut inner = self.lock();
        let before = inner.worker_kinds.len();
        inner
            .worker_kinds
            .retain(|_, &mut last_served| last_served >= since);
        Ok(before - inner.worker_kinds.len())
    }
}
