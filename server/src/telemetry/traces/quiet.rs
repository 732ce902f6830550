//! The exporter wrapper that keeps an unreachable collector from filling the log: a failed
//! export is a warning at most once per [`WARN_EVERY`] (with the count of failures since
//! the last one), and the spans of that batch are dropped, as the SDK would.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// How often at most a failing export is logged.
pub(super) const WARN_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(super) struct Quiet<E> {
    inner: E,
    warnings: Mutex<Warnings>,
}

/// When the last warning was logged, and how many failures were not.
#[derive(Debug, Default)]
struct Warnings {
    last: Option<Instant>,
    unlogged: u64,
}

impl Warnings {
    /// Counts a failure at `now`; `Some(failures)` when it is time to log them.
    fn failed(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_EVERY)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

impl<E> Quiet<E> {
    pub(super) fn new(inner: E) -> Quiet<E> {
        Quiet {
            inner,
            warnings: Mutex::default(),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Quiet<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        if let Err(err) = &result {
            let due = self
                .warnings
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .failed(Instant::now());
            if let Some(failures) = due {
                tracing::warn!(%err, spans, failures, "cannot export traces; spans dropped (logged at most once a minute)");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_logged_at_most_once_a_minute_with_the_count() {
        let start = Instant::now();
        let mut warnings = Warnings::default();
        assert_eq!(warnings.failed(start), Some(1));
        assert_eq!(warnings.failed(start + Duration::from_secs(1)), None);
        assert_eq!(warnings.failed(start + Duration::from_secs(59)), None);
        assert_eq!(warnings.failed(start + WARN_EVERY), Some(3));
        assert_eq!(warnings.failed(start + WARN_EVERY), None);
    }
}
