//! The embedded store's tenant limits: the counted places ([`TenantPlaces`]) and the start
//! buckets ([`StartRates`]), on this process's clock.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::MemoryStore;
use crate::store::bucket::Bucket;
use crate::store::{StartRates, StoreResult, TenantPlaces};

#[async_trait]
impl TenantPlaces for MemoryStore {
    async fn hold(
        &self,
        what: &str,
        tenant: &str,
        holder: &str,
        max: u64,
        _ttl: Duration,
    ) -> StoreResult<bool> {
        let mut places = self.places.lock().unwrap_or_else(|p| p.into_inner());
        let held = places
            .entry((what.to_owned(), tenant.to_owned()))
            .or_default();
        if held.len() as u64 >= max {
            return Ok(false);
        }
        held.insert(holder.to_owned());
        Ok(true)
    }

    async fn release(&self, what: &str, tenant: &str, holder: &str) -> StoreResult<()> {
        let mut places = self.places.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = places.get_mut(&(what.to_owned(), tenant.to_owned())) {
            held.remove(holder);
        }
        Ok(())
    }

    async fn refresh(&self, _: &str, _: &str, _: &[String], _: Duration) -> StoreResult<()> {
        Ok(())
    }
}

#[async_trait]
impl StartRates for MemoryStore {
    async fn take_start(
        &self,
        tenant: &str,
        per_second: f64,
        burst: u64,
    ) -> StoreResult<Option<Duration>> {
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets
            .entry(tenant.to_owned())
            .or_insert_with(|| Bucket::full(burst, now_ms));
        Ok(bucket.take(now_ms, per_second, burst).err())
    }
}
