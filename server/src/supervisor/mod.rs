//! The supervisor: the tasks this replica runs. It bounds how many run at once
//! (`--max-concurrency`), launches a [`driver`] per task, routes each change published on
//! the replica's control channel to the driver of that task, and lets callers wait for a
//! task's code to have stopped or for the replica to be idle.
//!
//! It depends on the narrow [`TaskPort`] only (read, report, escalate, time out), never on
//! the engine: when a task's code stops, the supervisor frees its place and notifies
//! whoever waits for free places (the dispatch loop), without calling back.

mod driver;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::executor::Job;
use crate::executor::remote::{WorkerPlace, WorkerSlot};
use crate::port::TaskPort;
use crate::store::Update;
use crate::task::{Task, TaskId};

/// A reserved place for one running task; dropping it frees the place.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// The place a running task holds, here or on a worker; its driver drops it once the
/// task's outcome is recorded.
#[expect(
    dead_code,
    reason = "held only to be dropped: dropping frees the place"
)]
enum Held {
    Local(Slot),
    Worker(WorkerPlace),
}

/// Where a task runs, with its place reserved: a built-in kind on one of this replica's
/// slots, or a worker kind on a connected worker.
pub enum Placement {
    Local(Slot, Box<dyn Job>),
    Worker(WorkerSlot),
}

impl Placement {
    /// The worker recorded on the task; empty for built-in kinds.
    pub fn worker_label(&self) -> String {
        match self {
            Placement::Local(..) => String::new(),
            Placement::Worker(slot) => slot.worker_label(),
        }
    }
}

/// What the supervisor holds for one running task.
struct Running {
    /// Changes of the task, for its driver.
    updates: mpsc::UnboundedSender<Update>,
    /// Cancelled by the driver once the code has stopped.
    stopped: CancellationToken,
    /// Set to the end of its window when the task is handed back (see [`driver`]).
    hand_back: watch::Sender<Option<Instant>>,
}

/// A task registered before the write that starts it ([`Supervisor::expect`]).
pub struct Starting {
    supervisor: Arc<Supervisor>,
    id: TaskId,
    /// What its driver gets; taken at the launch.
    told: Option<(
        mpsc::UnboundedReceiver<Update>,
        watch::Receiver<Option<Instant>>,
        CancellationToken,
    )>,
}

impl Drop for Starting {
    fn drop(&mut self) {
        if self.told.is_some() {
            // Never launched: as if its code had stopped.
            self.supervisor.forget(self.id);
        }
    }
}

pub struct Supervisor {
    slots: Arc<Semaphore>,
    running: Mutex<HashMap<TaskId, Running>>,
    /// Notified when the last running task has stopped.
    idle: Notify,
    /// How drivers read and report.
    port: Arc<dyn TaskPort>,
    /// Notified each time a task's code has stopped and its place is free.
    place_freed: Arc<Notify>,
}

impl Supervisor {
    pub(crate) fn new(
        max_concurrency: usize,
        port: Arc<dyn TaskPort>,
        place_freed: Arc<Notify>,
    ) -> Supervisor {
        Supervisor {
            slots: Arc::new(Semaphore::new(max_concurrency)),
            running: Mutex::new(HashMap::new()),
            idle: Notify::new(),
            port,
            place_freed,
        }
    }

    fn table(&self) -> MutexGuard<'_, HashMap<TaskId, Running>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn has_room(&self) -> bool {
        self.slots.available_permits() > 0
    }

    pub fn try_reserve(&self) -> Option<Slot> {
        Arc::clone(&self.slots)
            .try_acquire_owned()
            .ok()
            .map(|permit| Slot { _permit: permit })
    }

    /// Runs a task that this replica has just started (RUNNING, owned here). Its driver
    /// reads the record first: a change may have come before it was registered.
    pub fn launch(self: &Arc<Self>, task: Task, placement: Placement) {
        if let Some(starting) = self.expect(task.id) {
            self.start_driver(starting, task, placement, false);
        }
    }

    /// Registers task `id` before the write that starts it here, so that every change
    /// after that write reaches its driver ([`Supervisor::launch_started`]). Dropped
    /// without a launch (the write was refused), it leaves nothing behind. `None` if the
    /// task is already registered here (another start of it is under way, or it runs).
    pub fn expect(self: &Arc<Self>, id: TaskId) -> Option<Starting> {
        let stopped = CancellationToken::new();
        let (updates, updates_rx) = mpsc::unbounded_channel();
        let (hand_back, hand_back_rx) = watch::channel(None);
        match self.table().entry(id) {
            Entry::Occupied(_) => return None,
            Entry::Vacant(place) => place.insert(Running {
                updates,
                stopped: stopped.clone(),
                hand_back,
            }),
        };
        Some(Starting {
            supervisor: Arc::clone(self),
            id,
            told: Some((updates_rx, hand_back_rx, stopped)),
        })
    }

    /// Runs a task registered with [`Supervisor::expect`] that the write made RUNNING here
    /// (`task`, as written): its driver needs no first read.
    pub fn launch_started(self: &Arc<Self>, starting: Starting, task: Task, placement: Placement) {
        self.start_driver(starting, task, placement, true);
    }

    fn start_driver(
        self: &Arc<Self>,
        mut starting: Starting,
        task: Task,
        placement: Placement,
        current: bool,
    ) {
        let Some((updates_rx, hand_back_rx, stopped)) = starting.told.take() else {
            return;
        };
        let (job, place) = match placement {
            Placement::Local(slot, job) => (job, Held::Local(slot)),
            Placement::Worker(worker) => {
                let (job, place) = worker.into_job(task.id);
                (job, Held::Worker(place))
            }
        };
        tokio::spawn(driver::drive(
            Arc::clone(self),
            Arc::clone(&self.port),
            task,
            job,
            place,
            driver::Told {
                updates: updates_rx,
                hand_back: hand_back_rx,
                current,
            },
            stopped,
        ));
    }

    /// Asks the driver of task `id` to stop its code (as a soft cancel would, but for at
    /// most `within`) and give the task back to the queue: a draining replica's at-least-once
    /// hand-back of a task with attempts left.
    pub fn hand_back(&self, id: TaskId, within: Duration) {
        if let Some(running) = self.table().get(&id) {
            running
                .hand_back
                .send_replace(Some(Instant::now() + within));
        }
    }

    /// Hands a change from the control channel to the driver of its task, if it runs here.
    pub fn route(&self, update: Update) {
        match &update {
            Update::Changed(task) => {
                if let Some(running) = self.table().get(&task.id) {
                    let _ = running.updates.send(update);
                }
            }
            Update::Lagged => self.nudge_all(),
        }
    }

    /// Makes every driver re-read its record: after a reconnect, and periodically, so a
    /// lost hint delays a cancel but never loses it.
    pub fn nudge_all(&self) {
        for running in self.table().values() {
            let _ = running.updates.send(Update::Lagged);
        }
    }

    /// Called by a driver once its task's code has stopped (and its slot is free).
    fn forget(&self, id: TaskId) {
        {
            let mut table = self.table();
            if let Some(running) = table.remove(&id) {
                running.stopped.cancel();
            }
            if table.is_empty() {
                self.idle.notify_waiters();
            }
        }
        self.place_freed.notify_one();
    }

    /// Waits (at most `within`) until the code of task `id` has stopped, if it runs here.
    pub async fn wait_stopped(&self, id: TaskId, within: Duration) {
        let Some(stopped) = self.table().get(&id).map(|running| running.stopped.clone()) else {
            return;
        };
        if tokio::time::timeout(within, stopped.cancelled())
            .await
            .is_err()
        {
            tracing::warn!(task = %id, "the task's code has not stopped yet");
        }
    }

    pub fn running(&self) -> Vec<TaskId> {
        self.table().keys().copied().collect()
    }

    /// Waits (at most `within`) until no task runs here; true if idle.
    pub async fn wait_idle(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.idle.notified();
            if self.table().is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.table().is_empty();
            }
        }
    }
}

#[cfg(test)]
mod tests;
