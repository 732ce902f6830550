//! The embedded store's retention: finished tasks dropped `retention` after they finish,
//! by a loop the store owns.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use super::MemoryStore;
use crate::background::Background;

impl MemoryStore {
    /// A store whose finished tasks are swept out `retention` after they finish, by a loop
    /// on `background`.
    pub fn start(retention: Duration, background: &Background) -> Arc<MemoryStore> {
        let store = Arc::new(MemoryStore::new(retention));
        background.spawn(sweep_retention(Arc::downgrade(&store)));
        store
    }

    /// Drops the tasks that finished more than `retention` before `now`. Returns how many.
    pub fn sweep(&self, now: SystemTime) -> usize {
        let mut inner = self.lock();
        let mut dropped = 0;
        while let Some(&(finished_at, id)) = inner.finished.front() {
            if finished_at + self.retention > now {
                break;
            }
            inner.finished.pop_front();
            inner.forget(id);
            dropped += 1;
        }
        dropped
    }
}

/// Drops finished tasks once their retention has passed, until the store is dropped.
async fn sweep_retention(store: Weak<MemoryStore>) {
    let Some(retention) = store.upgrade().map(|store| store.retention) else {
        return;
    };
    let every = (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let Some(store) = store.upgrade() else { return };
        let dropped = store.sweep(SystemTime::now());
        if dropped > 0 {
            tracing::debug!(dropped, "finished tasks past retention dropped");
        }
    }
}
