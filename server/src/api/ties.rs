//! Calls tied to a task's life: a `WatchTask` with `cancel_on_disconnect` and a `RunTask`
//! (unless `continue_on_disconnect`). The rule is **last watcher leaves**: while the task
//! is active, the tied calls of it open on this replica are counted; when one goes away
//! (cancelled, connection dropped, deadline exceeded) and it was the last, the task is
//! soft-cancelled with that call's reason ("watcher disconnected", "caller disconnected")
//! and the default grace. A call that saw the task end, or that the server ended at
//! shutdown, leaves without cancelling anything.
//!
//! Counted per replica: a re-attach through another replica does not keep a task alive
//! here (route re-attaches to the same replica, or use `continue_on_disconnect`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::auth::Caller;
use crate::engine::{CancelRequest, Engine};
use crate::task::TaskId;

/// The tied calls open on this replica, per task.
pub(crate) struct Ties {
    engine: Arc<Engine>,
    open: Mutex<HashMap<TaskId, usize>>,
}

impl Ties {
    pub fn new(engine: Arc<Engine>) -> Arc<Ties> {
        Arc::new(Ties {
            engine,
            open: Mutex::new(HashMap::new()),
        })
    }

    fn open(&self) -> MutexGuard<'_, HashMap<TaskId, usize>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ties a call of `caller` to task `id`: when it leaves as the last, the task is
    /// cancelled with `reason`, on `caller`'s behalf.
    pub fn tie(self: &Arc<Ties>, id: TaskId, reason: &'static str, caller: Caller) -> Tie {
        *self.open().entry(id).or_default() += 1;
        Tie {
            ties: Arc::clone(self),
            id,
            reason,
            caller,
            armed: true,
        }
    }

    /// One call fewer; true if it was the last.
    fn leave(&self, id: TaskId) -> bool {
        let mut open = self.open();
        let Some(count) = open.get_mut(&id) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            open.remove(&id);
            return true;
        }
        false
    }
}

/// One tied call. Dropping it is the call going away.
pub(crate) struct Tie {
    ties: Arc<Ties>,
    id: TaskId,
    reason: &'static str,
    /// Whose call it is: the cancel is theirs.
    caller: Caller,
    armed: bool,
}

impl Tie {
    /// The call ends without cancelling (the task ended, or the server is shutting down).
    pub fn release(mut self) {
        self.armed = false;
        self.ties.leave(self.id);
    }
}

impl Drop for Tie {
    fn drop(&mut self) {
        if !self.armed || !self.ties.leave(self.id) {
            return;
        }
        let (engine, id, reason) = (Arc::clone(&self.ties.engine), self.id, self.reason);
        let caller = self.caller.clone();
        let grace = engine.default_grace();
        tracing::info!(task = %id, reason, "the last tied call left; soft-cancelling the task");
        tokio::spawn(async move {
            let _ = engine
                .cancel(
                    &caller,
                    id,
                    CancelRequest::Soft { grace },
                    reason.to_owned(),
                )
                .await;
        });
    }
}
