//! The replica's background work and who waits for it. Every loop that outlives a call
//! (lease, control channel, queue wake-ups, reaper, dispatch, the memory store's sweeper,
//! the Redis pub/sub watchdog) is spawned here; [`Background::shut_down`] tells them all to
//! stop and returns once every one has ended, so nothing runs detached past shutdown.
//!
//! It also hands out the jittered exponential backoff that every reconnecting loop uses, so
//! replicas that lost the store at the same moment do not come back in lockstep.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cheap to clone: clones share the same loops and the same stop signal.
#[derive(Clone, Default)]
pub(crate) struct Background {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Background {
    pub fn new() -> Background {
        Background::default()
    }

    /// Runs `work` until it ends or the background is shut down.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = work => {}
                () = stop.cancelled() => {}
            }
        });
    }

    /// Stops every loop and waits until all have ended.
    pub async fn shut_down(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Delays between retries against an unreachable store: from 50 ms, doubling to 2 s, with
/// full jitter, forever (a loop that retries stops only when its owner stops it).
pub(crate) fn store_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Waits for the next delay of `backoff` (which never runs out).
pub(crate) async fn wait(backoff: &mut ExponentialBackoff) {
    let delay = backoff.next().unwrap_or(Duration::from_secs(2));
    tokio::time::sleep(delay).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn shut_down_stops_every_loop_and_waits_for_it() {
        let background = Background::new();
        let ended = Arc::new(AtomicBool::new(false));
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        // Moved into the loop, so it drops with the loop's future even if that was never
        // polled.
        let guard = SetOnDrop(Arc::clone(&ended));
        background.spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        background.shut_down().await;
        assert!(
            ended.load(Ordering::SeqCst),
            "the loop ended before shut_down returned"
        );
    }

    #[test]
    fn store_backoff_stays_within_its_bounds_and_never_runs_out() {
        let delays: Vec<Duration> = store_backoff().take(50).collect();
        assert_eq!(delays.len(), 50);
        // Full jitter adds up to one more delay on top of the exponential one.
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(4)));
    }
}
