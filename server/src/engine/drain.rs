//! Graceful shutdown of this replica's work.

use std::time::Duration;

use super::Engine;
use super::transitions::CancelRequest;
use crate::auth::Caller;

impl Engine {
    /// Refuses new tasks and workers, gives running tasks `grace` to finish, then
    /// soft-cancels them with `soft_window` to stop before they are hard-cancelled.
    pub async fn drain(&self, grace: Duration, soft_window: Duration) {
        self.draining.cancel();
        if self.places.supervisor.wait_idle(grace).await {
            return;
        }
        let reason = "server shutting down".to_owned();
        let server = Caller::server(self.replica_id());
        let running = self.places.supervisor.running();
        tracing::info!(
            tasks = running.len(),
            "soft-cancelling the tasks still running"
        );
        for &id in &running {
            let _ = self
                .cancel(
                    &server,
                    id,
                    CancelRequest::Soft { grace: soft_window },
                    reason.clone(),
                )
                .await;
        }
        // Escalation at the end of the soft window hard-cancels whatever is left; the
        // explicit hard cancel below only covers tasks that raced past it.
        if self
            .places
            .supervisor
            .wait_idle(soft_window + Duration::from_millis(500))
            .await
        {
            return;
        }
        for id in self.places.supervisor.running() {
            let _ = self
                .cancel(&server, id, CancelRequest::Hard, reason.clone())
                .await;
        }
    }
}
