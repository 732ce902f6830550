//! Conformance checks of what the stores keep per tenant: `request_id`s, the cap on active
//! tasks, the start-rate bucket.

use super::{Created, TaskStore, new_task};
use crate::task::state_machine::{Event, apply};
use crate::task::{NewTask, TaskState};

fn of(tenant: &str, request_id: &str) -> crate::task::Task {
    new_task(NewTask {
        kind: "sleep".into(),
        tenant: tenant.into(),
        request_id: request_id.into(),
        ..NewTask::default()
    })
}

pub async fn request_ids_and_the_active_cap_are_per_tenant(store: &dyn TaskStore) {
    let acme = format!("acme-{}", uuid::Uuid::now_v7().simple());
    let globex = format!("globex-{}", uuid::Uuid::now_v7().simple());
    let (Created::New(first) | Created::NewFirst(first)) = store
        .create_within(of(&acme, "key"), Some(2))
        .await
        .unwrap()
    else {
        panic!("the first task was not created");
    };
    let other = store
        .create_within(of(&globex, "key"), Some(2))
        .await
        .unwrap();
    assert!(
        matches!(other, Created::New(_) | Created::NewFirst(_)),
        "another tenant's request id: {other:?}"
    );
    let again = store
        .create_within(of(&acme, "key"), Some(2))
        .await
        .unwrap();
    assert!(
        matches!(again, Created::Existing(ref task) if task.id == first.id),
        "{again:?}"
    );
    assert!(matches!(
        store.create_within(of(&acme, ""), Some(2)).await.unwrap(),
        Created::New(_) | Created::NewFirst(_)
    ));
    let over = store.create_within(of(&acme, ""), Some(2)).await.unwrap();
    assert!(
        matches!(over, Created::OverQuota { max_active: 2 }),
        "{over:?}"
    );
    // A finished task frees its place.
    let cancelled = apply(
        &first,
        &Event::HardCancel {
            reason: "done".into(),
        },
        std::time::SystemTime::now(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(cancelled.state, TaskState::Cancelled);
    store.compare_and_swap(&cancelled).await.unwrap();
    assert!(matches!(
        store.create_within(of(&acme, ""), Some(2)).await.unwrap(),
        Created::New(_) | Created::NewFirst(_)
    ));
    assert!(matches!(
        store.create_within(of(&acme, ""), None).await.unwrap(),
        Created::New(_) | Created::NewFirst(_)
    ));
}

pub async fn the_start_bucket_allows_the_burst_then_says_how_long_to_wait(store: &dyn TaskStore) {
    let tenant = format!("bucket-{}", uuid::Uuid::now_v7().simple());
    for _ in 0..3 {
        assert_eq!(store.take_start(&tenant, 0.5, 3).await.unwrap(), None);
    }
    let wait = store
        .take_start(&tenant, 0.5, 3)
        .await
        .unwrap()
        .expect("empty bucket");
    assert!(
        wait > std::time::Duration::from_millis(1000) && wait <= std::time::Duration::from_secs(2),
        "{wait:?}"
    );
    let other = format!("other-{}", uuid::Uuid::now_v7().simple());
    assert_eq!(
        store.take_start(&other, 0.5, 3).await.unwrap(),
        None,
        "buckets are per tenant"
    );
}
