use std::sync::Arc;

use super::*;
use crate::store::conformance;
use crate::store::memory::MemoryStore;
use crate::telemetry::metrics::metrics;

// The decorator changes nothing a backend does.
conformance::suite!(Arc::new(MeteredStore::new(Arc::new(MemoryStore::new(
    Duration::from_secs(3600)
)))));

#[test]
fn the_store_is_unreachable_from_the_first_failure_until_an_answer() {
    let health = StoreHealth::default();
    let since = || health.failing_since.load(Ordering::Relaxed);
    assert_eq!(health.unreachable_for(), Duration::ZERO);
    health.note(false);
    let first = since();
    assert_ne!(first, 0, "failing after a failure");
    health.note(false);
    assert_eq!(since(), first, "measured from the first failure");
    health.note(true);
    assert_eq!(since(), 0);
    assert_eq!(health.unreachable_for(), Duration::ZERO);
}

#[test]
fn every_operation_has_its_series() {
    assert!(Op::ALL.iter().enumerate().all(|(i, op)| *op as usize == i));
    assert_eq!(metrics().store.ops.len(), Op::ALL.len());
}
