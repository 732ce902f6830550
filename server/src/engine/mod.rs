//! The engine: what the api and the replica's background loops ask of this replica.
//!
//! It turns commands into state-machine events, persists each change with one
//! compare-and-set ([`transitions`]), and applies the rules that reach beyond one task:
//! start and idempotency ([`start`]), which kinds are valid and for how long ([`kinds`]),
//! subtree cancels ([`cancel`]), dispatch onto this
//! replica's supervisor and workers ([`dispatch`]), watches ([`watch`]), graceful
//! shutdown ([`drain`]) and taking over the tasks of a worker that moved here ([`adopt`]).
//!
//! Data flows one way: a command is decided by the state machine, stored, and announced on
//! the task's feeds; the supervisor's drivers react to the announced change (stop the code,
//! signal a soft cancel, deliver an answer). The engine never reaches into a running job,
//! and running code reaches back only through the narrow [`crate::port::TaskPort`].

mod adopt;
mod budget;
pub(crate) mod bulk_cancel;
mod cancel;
mod dispatch;
mod drain;
mod held;
pub(crate) mod kinds;
mod lost_reply;
mod start;
mod transitions;
mod watch;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::dispatch::{Dispatcher, Places};
pub(crate) use self::held::Held;
use self::held::{Counted, Holdings};
pub(crate) use self::transitions::CancelRequest;
use self::transitions::{Applied, Transitions};
use crate::auth::Caller;
use crate::background::Background;
use crate::error::{Error, Result};
use crate::executor::Kinds;
use crate::executor::remote::{Commands, Worker, WorkerPool};
use crate::limits::Limits;
use crate::store::{ActiveFilter, StartRates, Store, TaskFeeds, Update, WorkerKinds};
use crate::supervisor::Supervisor;
use crate::task::state_machine::Event;
use crate::task::{CheckpointLimits, Task, TaskId};
use crate::telemetry::metrics::{WorkerKindOccupancy, metrics};

#[derive(Clone, Debug)]
pub(crate) struct EngineConfig {
    pub replica_id: String,
    pub default_grace: Duration,
    pub max_concurrency: usize,
    /// Kinds served by workers that StartTask accepts before any worker has connected
    /// (`--worker-kind`); they never expire.
    pub worker_kinds: Vec<String>,
    /// Whether a `hello` may name kinds that are not declared, making them valid for
    /// StartTask on every replica (see [`kinds`]).
    pub learn_worker_kinds: bool,
    /// How long a learned kind stays valid after the last worker serving it left.
    pub worker_kind_ttl: Duration,
    /// What running code may report (checked on every report, see `Transitions`).
    pub limits: Limits,
    /// How many checkpoints, of how many bytes in all, a task keeps.
    pub checkpoint_limits: CheckpointLimits,
    /// How long a session cancelled by CancelTasks refuses new tasks.
    pub cancelled_session_ttl: Duration,
    /// Whether a drain hands running tasks with attempts left back to the queue: only
    /// when other replicas share the store ([`drain`]).
    pub hand_back_on_drain: bool,
}

pub(crate) struct Engine {
    config: EngineConfig,
    transitions: Arc<Transitions>,
    feeds: Arc<dyn TaskFeeds>,
    worker_kinds: Arc<dyn WorkerKinds>,
    /// The tenants' start buckets (`max_starts_per_second`).
    start_rates: Arc<dyn StartRates>,
    /// The places of `max_watchers` and `max_workers` held here.
    holdings: Arc<Holdings>,
    places: Arc<Places>,
    dispatcher: Arc<Dispatcher>,
    /// Cancelled when shutdown begins: no new task or worker is taken from then on.
    draining: CancellationToken,
}

/// One page of `ListActive`.
pub(crate) struct Page {
    pub tasks: Vec<Task>,
    /// Where the next page starts, if there is one.
    pub next_after: Option<TaskId>,
}

impl Engine {
    /// The engine of one replica; its dispatch loop runs on `background`.
    pub fn new(
        config: EngineConfig,
        store: &Store,
        kinds: Kinds,
        background: &Background,
    ) -> Arc<Engine> {
        let transitions = Arc::new(Transitions::new(
            config.replica_id.clone(),
            Arc::clone(&store.records),
            Arc::clone(&store.queue),
            config.default_grace,
            config.limits,
            config.checkpoint_limits,
        ));
        // Freed places (a task ended, a worker connected) wake the dispatch loop.
        let wake_dispatch = Arc::new(Notify::new());
        let supervisor = Arc::new(Supervisor::new(
            config.max_concurrency,
            transitions.clone(),
            Arc::clone(&wake_dispatch),
        ));
        let places = Arc::new(Places {
            kinds: Arc::new(kinds),
            workers: Arc::new(WorkerPool::default()),
            supervisor,
        });
        let draining = CancellationToken::new();
        let dispatcher = Arc::new(Dispatcher::new(
            config.replica_id.clone(),
            Arc::clone(&transitions),
            Arc::clone(&store.queue),
            Arc::clone(&places),
            draining.clone(),
            wake_dispatch,
        ));
        background.spawn(Arc::clone(&dispatcher).follow_wakeups());
        let holdings = Holdings::new(Arc::clone(&store.tenant_places), config.replica_id.clone());
        background.spawn(Arc::clone(&holdings).refresh_loop());
        Arc::new(Engine {
            config,
            transitions,
            feeds: Arc::clone(&store.feeds),
            worker_kinds: Arc::clone(&store.worker_kinds),
            start_rates: Arc::clone(&store.start_rates),
            holdings,
            places,
            dispatcher,
            draining,
        })
    }

    pub fn replica_id(&self) -> &str {
        &self.config.replica_id
    }

    pub fn default_grace(&self) -> Duration {
        self.config.default_grace
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    pub async fn check(&self, id: TaskId) -> Result<Task> {
        self.transitions.check(id).await
    }

    /// The task as `caller` may see it: another tenant's task is not found, exactly as an
    /// unknown id (its existence does not leak).
    pub async fn check_as(&self, caller: &Caller, id: TaskId) -> Result<Task> {
        let task = self.check(id).await?;
        if !caller.sees(&task.tenant) {
            return Err(Error::TaskNotFound(id));
        }
        Ok(task)
    }

    pub async fn answer(&self, caller: &Caller, id: TaskId, answer: String) -> Result<Task> {
        self.check_as(caller, id).await?;
        match self.transitions.apply(id, Event::Answer { answer }).await? {
            Applied::Changed { after, .. } => Ok(after),
            Applied::Unchanged(task) | Applied::Rejected(task, _) => Err(Error::TaskNotWaiting {
                id,
                state: task.state,
            }),
        }
    }

    pub async fn list_active(
        &self,
        filter: &ActiveFilter,
        after: Option<TaskId>,
        page_size: usize,
    ) -> Result<Page> {
        let mut tasks = self
            .transitions
            .records()
            .list_active(filter, after, page_size + 1)
            .await?;
        let next_after = if tasks.len() > page_size {
            tasks.truncate(page_size);
            tasks.last().map(|task| task.id)
        } else {
            None
        };
        Ok(Page { tasks, next_after })
    }

    /// Settles the started tasks of a replica that lost its lease (or of this replica's
    /// previous life, at start-up). Returns how many were settled.
    pub async fn settle_lost_owner(&self, owner: &str) -> Result<usize> {
        let mut settled = 0;
        for task in self.transitions.records().owned_by(owner).await? {
            let event = Event::OwnerLost {
                owner: owner.to_owned(),
            };
            if let Applied::Changed { after, .. } = self.transitions.apply(task.id, event).await? {
                tracing::warn!(task = %task.id, %owner, state = ?after.state, "settled a task of a lost replica");
                metrics().settled_by_reaper(after.state);
                settled += 1;
            }
        }
        Ok(settled)
    }

    /// Hands a change of a task this replica owns (from its control channel) to the
    /// task's driver.
    pub fn route_owned_change(&self, update: Update) {
        self.places.supervisor.route(update);
    }

    /// Makes every driver here re-read its record: after a reconnect, periodically, and
    /// when this replica's lease had lapsed.
    pub fn reread_running(&self) {
        self.places.supervisor.nudge_all();
    }

    /// Asks for a dispatch round: queued work may now have a place here.
    pub fn wake_dispatch(&self) {
        self.dispatcher.wake();
    }

    /// Admits a worker that said `hello` with these kinds and capacity; it receives tasks
    /// once [`Engine::serve_worker`] is called (after its welcome is on its stream).
    /// Built-in kinds cannot be served by workers; the others are learned cluster-wide, so
    /// that any replica accepts their tasks, or must be declared ([`kinds`]).
    /// The worker serves `caller`'s tenant only (an admin's worker: every tenant).
    pub async fn admit_worker(
        &self,
        caller: &Caller,
        name: String,
        kinds: Vec<String>,
        max_concurrency: usize,
        commands: Commands,
    ) -> Result<Arc<Worker>> {
        if self.is_draining() {
            return Err(Error::ShuttingDown);
        }
        self.admit_worker_kinds(&kinds).await?;
        Ok(Arc::new(Worker::new(
            TaskId::now_v7().to_string(),
            name,
            kinds.into_iter().collect::<HashSet<_>>(),
            caller.list_scope(),
            max_concurrency,
            commands,
        )))
    }

    /// A place among the caller's tenant's watchers (`max_watchers`), held while the
    /// watch is open; `None` when the tenant has no such quota.
    pub async fn hold_watch(&self, caller: &Caller) -> Result<Option<Held>> {
        self.hold(caller, Counted::Watchers).await
    }

    /// A place among the caller's tenant's workers (`max_workers`).
    pub async fn hold_worker(&self, caller: &Caller) -> Result<Option<Held>> {
        self.hold(caller, Counted::Workers).await
    }

    async fn hold(&self, caller: &Caller, what: Counted) -> Result<Option<Held>> {
        let Some(quotas) = &caller.quotas else {
            return Ok(None);
        };
        let max = match what {
            Counted::Watchers => quotas.max_watchers,
            Counted::Workers => quotas.max_workers,
        };
        match max {
            None => Ok(None),
            Some(max) => Ok(Some(self.holdings.hold(what, &quotas.name, max).await?)),
        }
    }

    /// Gives tasks to an admitted worker from now on.
    pub fn serve_worker(&self, worker: &Arc<Worker>) {
        self.places.workers.add(Arc::clone(worker));
        // New capacity: start queued tasks of its kinds.
        self.dispatcher.wake();
    }

    /// The workers connected here, per kind they serve (for `reins_worker_slots`).
    pub fn worker_occupancy(&self) -> Vec<WorkerKindOccupancy> {
        self.places.workers.occupancy()
    }

    /// The worker's stream ended: the jobs it was running learn that it is lost.
    pub fn disconnect_worker(&self, worker: &Worker) {
        self.places.workers.remove(&worker.id);
    }
}
