//! Fair dispatch across tenants: a tenant with a long queue does not hold up another
//! tenant's next task for more than one dispatch round.

use std::time::SystemTime;

use reins_client::StartTask;
use reins_client::proto::TaskState;
use reins_e2e::auth::{AuthFile, client_with_token};
use reins_e2e::{Reinsd, started, system_time};

use crate::auth::principals;

/// Tenant acme queues many short tasks on a server with two slots; globex's one task
/// then starts before more than about one round (two slots, and the round running when it
/// was submitted) of acme's queue has started — oldest first would run all of acme's
/// queued tasks before it.
#[tokio::test]
async fn a_long_queue_of_one_tenant_does_not_hold_up_another_tenants_task() {
    const QUEUED: usize = 300;
    const SLOTS: usize = 2;
    let file = AuthFile::new(&principals());
    let path = file.path().to_str().unwrap().to_owned();
    let server = Reinsd::with_args(&["--auth-config", &path, "--max-concurrency", "2"]);
    let alice = client_with_token(&server.url(), "alice-token").await;
    let bob = client_with_token(&server.url(), "bob-token").await;
    let short = || StartTask::new("sleep").params(reins_e2e::sleep_params(1, 200));
    let mut ours = Vec::new();
    for _ in 0..QUEUED {
        ours.push(alice.start(short()).await.expect("acme queues").id);
    }

    let submitted = SystemTime::now();
    let theirs = bob.start(short()).await.expect("globex starts");
    let theirs = started(&bob, theirs).await;
    let theirs_started = system_time(theirs.started_at.as_ref());

    let mut still_pending = 0;
    let mut overtook = 0;
    for id in &ours {
        let task = alice.check(id).await.expect("check");
        if task.state() == TaskState::Pending {
            still_pending += 1;
        } else if task.started_at.is_some() {
            let at = system_time(task.started_at.as_ref());
            if at > submitted && at < theirs_started {
                overtook += 1;
            }
        }
    }
    assert!(
        still_pending > QUEUED / 2,
        "acme's queue drained too fast for the test to mean anything: {still_pending} left"
    );
    assert!(
        overtook <= 2 * SLOTS,
        "{overtook} of acme's queued tasks started between globex's submission and its start \
         (at most about one round of {SLOTS} slots expected)"
    );
}
