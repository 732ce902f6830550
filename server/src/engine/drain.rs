//! Graceful shutdown of this replica's work, so that a rolling update loses none:
//!
//! - queued tasks stay PENDING (nothing here touches them; dispatch stops);
//! - workers are asked at once to reconnect elsewhere (`WorkerCommand.reconnect`): their
//!   running tasks move with them, adopted by the replica they reach (`adopt.rs`);
//! - tasks still running here at the end of `--shutdown-grace` are, with a shared store,
//!   handed back to the queue when they have attempts left and no cancel was asked
//!   (at-least-once: their code is stopped first, then another replica starts the next
//!   attempt, resuming from the task's checkpoints); the others — no attempt left, or the
//!   embedded store, where nobody else could run them — are soft-cancelled ("server
//!   shutting down"), then hard-cancelled if they do not stop within the soft window.

use std::time::Duration;

use super::Engine;
use super::transitions::CancelRequest;
use crate::auth::Caller;

/// The cancel reason of the tasks a drain cancels.
const SHUTTING_DOWN: &str = "server shutting down";

impl Engine {
    /// Refuses new tasks and workers, asks the workers here to move, gives running tasks
    /// `grace` to finish, then hands back or soft-cancels the rest (module doc), each with
    /// `soft_window` to stop.
    pub async fn drain(&self, grace: Duration, soft_window: Duration) {
        self.draining.cancel();
        let workers = self.places.workers.ask_to_reconnect(SHUTTING_DOWN);
        if workers > 0 {
            tracing::info!(workers, "asked the workers here to reconnect elsewhere");
        }
        if self.places.supervisor.wait_idle(grace).await {
            return;
        }
        let server = Caller::server(self.replica_id());
        let running = self.places.supervisor.running();
        let mut handed_back = 0;
        for &id in &running {
            let hand_back =
                self.config.hand_back_on_drain
                    && self.transitions.check(id).await.is_ok_and(|task| {
                        task.cancel.is_none() && task.attempt < task.max_attempts
                    });
            if hand_back {
                self.places.supervisor.hand_back(id, soft_window);
                handed_back += 1;
                continue;
            }
            let _ = self
                .cancel(
                    &server,
                    id,
                    CancelRequest::Soft { grace: soft_window },
                    SHUTTING_DOWN.to_owned(),
                )
                .await;
        }
        tracing::info!(
            handed_back,
            cancelled = running.len() - handed_back,
            "the tasks still running at the end of the grace"
        );
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
                .cancel(&server, id, CancelRequest::Hard, SHUTTING_DOWN.to_owned())
                .await;
        }
    }
}
