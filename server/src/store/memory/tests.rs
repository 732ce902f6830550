use super::*;
use crate::store::{TaskRecords, TaskStore, conformance};

fn store() -> Arc<dyn TaskStore> {
    Arc::new(MemoryStore::new(Duration::from_secs(3600)))
}

conformance::suite!(store());

/// The cost of a version does not grow with the checkpoints: every stored version
/// of a task shares one checkpoint log instead of holding its own copy.
#[tokio::test]
async fn versions_share_their_checkpoints() {
    let store = MemoryStore::new(Duration::from_secs(60));
    let (active, _) = conformance::one_active_one_finished(&store).await;
    let running = store.get(active).await.unwrap().unwrap();
    let limits = crate::task::CheckpointLimits {
        max_count: 1000,
        max_bytes: 1 << 20,
    };
    let task = conformance::checkpoints_within(&store, &running, 50, limits).await;
    let history = store
        .history(task.id, task.version - 50)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(history.len(), 50);
    let stored = store.get(task.id).await.unwrap().unwrap();
    for version in &history {
        assert!(
            version
                .partial_results
                .shares_storage_with(&stored.partial_results),
            "version {} copied its checkpoints",
            version.version
        );
    }
    assert_eq!(stored.partial_results.len(), 50);
}

#[tokio::test]
async fn sweep_drops_finished_tasks_after_retention_only() {
    let store = MemoryStore::new(Duration::from_secs(60));
    let (active, finished) = conformance::one_active_one_finished(&store).await;
    let finished_at = store
        .get(finished)
        .await
        .unwrap()
        .unwrap()
        .finished_at
        .unwrap();

    assert_eq!(store.sweep(finished_at + Duration::from_secs(59)), 0);
    assert!(store.get(finished).await.unwrap().is_some());

    assert_eq!(store.sweep(finished_at + Duration::from_secs(60)), 1);
    assert!(store.get(finished).await.unwrap().is_none());
    assert!(store.get(active).await.unwrap().is_some());
    assert_eq!(store.len(), 1, "nothing else is kept for the dropped task");
}
