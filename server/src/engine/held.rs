//! The places of a tenant's `max_watchers` and `max_workers` quotas that this replica
//! holds: each open watch and each connected worker of a tenant with such a quota takes
//! one in the store (shared by every replica), keeps it from lapsing while it lives
//! ([`HOLD_TTL`], refreshed every [`REFRESH_EVERY`]), and gives it back when dropped. A
//! replica that dies leaves its places to lapse within [`HOLD_TTL`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::store::TenantPlaces;

/// How long a place outlives the last refresh of the replica holding it.
pub(crate) const HOLD_TTL: Duration = Duration::from_secs(30);
const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// What is counted: the quota's name in the auth config, and the store's name for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Counted {
    Watchers,
    Workers,
}

impl Counted {
    fn name(self) -> &'static str {
        match self {
            Counted::Watchers => "watchers",
            Counted::Workers => "workers",
        }
    }
}

pub(crate) struct Holdings {
    places: Arc<dyn TenantPlaces>,
    replica_id: String,
    live: Mutex<HashMap<(Counted, String), HashSet<String>>>,
}

/// One place held; given back when dropped.
pub(crate) struct Held {
    holdings: Arc<Holdings>,
    what: Counted,
    tenant: String,
    holder: String,
}

impl Holdings {
    pub fn new(places: Arc<dyn TenantPlaces>, replica_id: String) -> Arc<Holdings> {
        Arc::new(Holdings {
            places,
            replica_id,
            live: Mutex::new(HashMap::new()),
        })
    }

    fn live(&self) -> MutexGuard<'_, HashMap<(Counted, String), HashSet<String>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place of `tenant`'s `what`, at most `max` across the cluster.
    pub async fn hold(self: &Arc<Self>, what: Counted, tenant: &str, max: u64) -> Result<Held> {
        let holder = format!("{}/{}", self.replica_id, uuid::Uuid::now_v7());
        let taken = self
            .places
            .hold(what.name(), tenant, &holder, max, HOLD_TTL)
            .await?;
        if !taken {
            return Err(Error::QuotaExceeded {
                tenant: tenant.to_owned(),
                quota: match what {
                    Counted::Watchers => "max_watchers",
                    Counted::Workers => "max_workers",
                },
                limit: format!("{max} {}", what.name()),
                retry_after: None,
            });
        }
        self.live()
            .entry((what, tenant.to_owned()))
            .or_default()
            .insert(holder.clone());
        Ok(Held {
            holdings: Arc::clone(self),
            what,
            tenant: tenant.to_owned(),
            holder,
        })
    }

    /// Refreshes every place held here, for ever (run on the replica's background).
    pub async fn refresh_loop(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(REFRESH_EVERY);
        loop {
            ticks.tick().await;
            let live: Vec<((Counted, String), Vec<String>)> = self
                .live()
                .iter()
                .filter(|(_, holders)| !holders.is_empty())
                .map(|(key, holders)| (key.clone(), holders.iter().cloned().collect()))
                .collect();
            for ((what, tenant), holders) in live {
                if let Err(err) = self
                    .places
                    .refresh(what.name(), &tenant, &holders, HOLD_TTL)
                    .await
                {
                    tracing::warn!(%err, %tenant, what = what.name(), "cannot refresh quota places");
                }
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(holders) = self
            .holdings
            .live()
            .get_mut(&(self.what, self.tenant.clone()))
        {
            holders.remove(&self.holder);
        }
        let places = Arc::clone(&self.holdings.places);
        let (what, tenant, holder) = (self.what, self.tenant.clone(), self.holder.clone());
        // Outside a runtime (never in the server) the place lapses by itself.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = places.release(what.name(), &tenant, &holder).await {
                    tracing::debug!(%err, "a quota place lapses by itself");
                }
            });
        }
    }
}
