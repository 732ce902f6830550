//! Dispatch: starting queued tasks where this replica has room, oldest first within each
//! tenant and fair across tenants.
//!
//! A round first takes from every tenant's queue in turn — one task per tenant per pass,
//! the tenant it starts with rotating from round to round — so one tenant's 100,000 queued
//! tasks delay another tenant's next task by at most one pass, not by their number. Then,
//! with room left, it looks down the whole queue oldest first (tasks queued before the
//! per-tenant queues existed are found there; a task already started is not started twice,
//! the compare-and-set refuses it).
//!
//! One [`Dispatcher`] per replica. Rounds are single-flight: one runs at a time, and a
//! request while one runs only asks for another, so concurrent callers (every StartTask,
//! every freed place) do not race each other for the same oldest task. The dispatch loop
//! ([`Dispatcher::follow_wakeups`]) runs a round whenever it is woken: a place was freed, a
//! worker connected, another replica queued work, or the periodic look came round.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::transitions::{Applied, Transitions};
use crate::error::Result;
use crate::executor::Kinds;
use crate::executor::remote::WorkerPool;
use crate::store::TaskQueue;
use crate::supervisor::{Placement, Supervisor};
use crate::task::Task;
use crate::task::state_machine::Event;

/// How many queued tasks one dispatch round reads at a time.
const DISPATCH_BATCH: usize = 64;
/// How far down the queue one dispatch round looks for tasks it can place.
const DISPATCH_SCAN: usize = 4096;

/// Where tasks can run on this replica: built-in kinds on the supervisor's slots, worker
/// kinds on the connected workers.
pub(crate) struct Places {
    pub kinds: Arc<Kinds>,
    pub workers: Arc<WorkerPool>,
    pub supervisor: Arc<Supervisor>,
}

impl Places {
    fn have_room(&self) -> bool {
        self.supervisor.has_room() || self.workers.has_room()
    }

    /// Where a queued task would run on this replica, with the place reserved.
    fn reserve(&self, task: &Task) -> Option<Placement> {
        match self.kinds.get(&task.kind) {
            Ok(kind) => {
                let job = kind.prepare(&task.params).ok()?;
                Some(Placement::Local(self.supervisor.try_reserve()?, job))
            }
            // A worker receives only its own tenant's tasks.
            Err(_) => self
                .workers
                .reserve(&task.kind, &task.tenant)
                .map(Placement::Worker),
        }
    }
}

pub(crate) struct Dispatcher {
    replica_id: String,
    transitions: Arc<Transitions>,
    queue: Arc<dyn TaskQueue>,
    places: Arc<Places>,
    /// Set when shutdown begins: no more tasks are started here.
    draining: CancellationToken,
    /// Held while a round runs; see [`Dispatcher::rounds`].
    dispatching: tokio::sync::Mutex<()>,
    /// A round was asked for since the running one started.
    wanted: AtomicBool,
    /// Wakes the dispatch loop.
    wake: Arc<Notify>,
    /// Where the next round starts among the tenants, so that none is always first.
    next_tenant: AtomicUsize,
    /// The last round found the queue empty and nothing was queued since (every way a
    /// task is queued or a look is due goes through [`Dispatcher::wake`] or
    /// [`Dispatcher::announce_queued`]): a freed place then costs no look at the queue.
    queue_empty: AtomicBool,
}

/// One tenant's queue as a round reads it, page by page.
struct TenantQueue {
    tenant: String,
    after: Option<crate::task::TaskId>,
    page: VecDeque<Task>,
    scanned: usize,
    exhausted: bool,
}

impl TenantQueue {
    fn new(tenant: String) -> TenantQueue {
        TenantQueue {
            tenant,
            after: None,
            page: VecDeque::new(),
            scanned: 0,
            exhausted: false,
        }
    }

    /// The tenant's next queued task this round, if any is left within the scan limit.
    async fn next(&mut self, queue: &dyn TaskQueue) -> Option<Task> {
        if self.page.is_empty() && !self.exhausted && self.scanned < DISPATCH_SCAN {
            match queue
                .oldest_pending_of(&self.tenant, self.after, DISPATCH_BATCH)
                .await
            {
                Ok(page) => {
                    self.exhausted = page.len() < DISPATCH_BATCH;
                    self.scanned += page.len();
                    self.after = page.last().map(|task| task.id);
                    self.page.extend(page);
                }
                Err(err) => {
                    tracing::warn!(%err, tenant = %self.tenant, "cannot read a tenant's queue");
                    self.exhausted = true;
                }
            }
        }
        self.page.pop_front()
    }
}

impl Dispatcher {
    pub fn new(
        replica_id: String,
        transitions: Arc<Transitions>,
        queue: Arc<dyn TaskQueue>,
        places: Arc<Places>,
        draining: CancellationToken,
        wake: Arc<Notify>,
    ) -> Dispatcher {
        Dispatcher {
            replica_id,
            transitions,
            queue,
            places,
            draining,
            dispatching: tokio::sync::Mutex::new(()),
            wanted: AtomicBool::new(false),
            wake,
            next_tenant: AtomicUsize::new(0),
            queue_empty: AtomicBool::new(false),
        }
    }

    /// Asks the dispatch loop for a round that looks at the queue (queued work may be
    /// there). A freed place notifies the loop directly, and its round looks only if the
    /// queue may hold something.
    pub fn wake(&self) {
        self.queue_empty.store(false, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The dispatch loop: a round each time it is woken. A wake-up during a round is kept
    /// (a [`Notify`] permit), so none is lost.
    pub async fn follow_wakeups(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            self.rounds(false).await;
        }
    }

    /// Tells the other replicas that a task waits that this one could not start.
    pub async fn announce_queued(&self) {
        self.queue_empty.store(false, Ordering::SeqCst);
        if let Err(err) = self.queue.announce_queued().await {
            tracing::warn!(%err, "cannot wake the other replicas; they look every few seconds");
        }
    }

    /// Starts a new task here at once if nothing older waits and this replica has room
    /// (no queue to contend for); otherwise lets a dispatch round take the oldest first,
    /// and returns the task as that round left it.
    ///
    /// `first`: the store said that no older task waits (no need to look).
    pub async fn start_new(&self, task: Task, first: bool) -> Result<Task> {
        // Oldest first within the tenant; another tenant's older tasks wait their turn in
        // the rounds, which are fair across tenants. Without room here the task waits
        // whatever is ahead of it, so the queue is not read.
        let behind =
            !first && self.places.have_room() && !self.queue.first_of_its_tenant(&task).await?;
        if behind {
            self.queue_empty.store(false, Ordering::SeqCst);
            self.rounds(true).await;
        } else if let Some(placement) = self.places.reserve(&task)
            && let Some(starting) = self.places.supervisor.expect(task.id)
        {
            let worker = placement.worker_label();
            if let Applied::Changed { after, .. } = self.start_here(task.clone(), worker).await? {
                let supervisor = &self.places.supervisor;
                supervisor.launch_started(starting, after.clone(), placement);
                return Ok(after);
            }
        }
        Ok(self
            .transitions
            .records()
            .get(task.id)
            .await?
            .unwrap_or(task))
    }

    /// Requests a round and, unless `wait`, returns at once if one is running (it will run
    /// another). With `wait` it returns only after a round that started after the request
    /// (StartTask wants to answer RUNNING when its task got a place).
    async fn rounds(&self, wait: bool) {
        self.wanted.store(true, Ordering::SeqCst);
        loop {
            let round = if wait {
                self.dispatching.lock().await
            } else {
                match self.dispatching.try_lock() {
                    Ok(round) => round,
                    Err(_) => return,
                }
            };
            while self.wanted.swap(false, Ordering::SeqCst) {
                self.round().await;
            }
            drop(round);
            // A request made between the last round and the unlock found the lock taken.
            if !self.wanted.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    /// One round: the tenants in turn, then the whole queue oldest first.
    async fn round(&self) {
        // Without room a round can start nothing: the queue is not read (a slot freed
        // later asks for another round).
        if self.queue_empty.load(Ordering::SeqCst) || !self.places.have_room() {
            return;
        }
        self.tenants_in_turn().await;
        self.oldest_first().await;
    }

    /// Passes over the tenants' queues, starting at most one task of each tenant per pass,
    /// while this replica has room and some tenant had a task it could place.
    async fn tenants_in_turn(&self) {
        let mut tenants = match self.queue.pending_tenants().await {
            Ok(tenants) => tenants,
            Err(err) => {
                tracing::warn!(%err, "cannot read the tenants with queued tasks");
                return;
            }
        };
        if tenants.len() < 2 {
            // Nothing to share: the oldest-first pass is the same.
            return;
        }
        tenants.sort();
        let first = self.next_tenant.fetch_add(1, Ordering::Relaxed) % tenants.len();
        tenants.rotate_left(first);
        let mut queues: Vec<TenantQueue> = tenants.into_iter().map(TenantQueue::new).collect();
        loop {
            let mut started_any = false;
            for queue in &mut queues {
                if self.draining.is_cancelled() || !self.places.have_room() {
                    return;
                }
                while let Some(candidate) = queue.next(self.queue.as_ref()).await {
                    if self.try_start(&candidate).await {
                        started_any = true;
                        break;
                    }
                }
            }
            if !started_any {
                return;
            }
        }
    }

    /// Starts `candidate` here if there is a place for it; whether it started (it is passed
    /// over when there is no place: no worker for its kind or tenant here, no slot).
    async fn try_start(&self, candidate: &Task) -> bool {
        let Some(placement) = self.places.reserve(candidate) else {
            return false;
        };
        // Registered before the write: a start of it under way here is left alone.
        let Some(starting) = self.places.supervisor.expect(candidate.id) else {
            return false;
        };
        let worker = placement.worker_label();
        match self.start_here(candidate.clone(), worker).await {
            Ok(Applied::Changed { after, .. }) => {
                self.places
                    .supervisor
                    .launch_started(starting, after, placement);
                true
            }
            // Started elsewhere meanwhile, or cancelled: the place goes back.
            _ => false,
        }
    }

    /// One pass over the queue, oldest first, starting every task this replica can place
    /// while it has room. Tasks it cannot place (no worker for their kind here, another
    /// exec allowlist) are passed over, so they do not hold up the rest.
    async fn oldest_first(&self) {
        let mut after = None;
        let mut scanned = 0;
        while !self.draining.is_cancelled() && self.places.have_room() && scanned < DISPATCH_SCAN {
            // Set before the read: a task queued meanwhile clears it again (its
            // announcement comes after its write), so no queued task is passed over.
            if after.is_none() {
                self.queue_empty.store(true, Ordering::SeqCst);
            }
            let page = match self.queue.oldest_pending(after, DISPATCH_BATCH).await {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(%err, "cannot read the dispatch queue");
                    self.queue_empty.store(false, Ordering::SeqCst);
                    return;
                }
            };
            let Some(last) = page.last() else { return };
            if after.is_none() {
                self.queue_empty.store(false, Ordering::SeqCst);
            }
            after = Some(last.id);
            scanned += page.len();
            let exhausted = page.len() < DISPATCH_BATCH;
            for candidate in page {
                self.try_start(&candidate).await;
            }
            if exhausted {
                return;
            }
        }
    }

    /// Records the start of `task` on this replica (on `worker` for a worker kind),
    /// deciding on `task` as just created or listed (no read before the write).
    async fn start_here(&self, task: Task, worker: String) -> Result<Applied> {
        let event = Event::Start {
            owner: self.replica_id.clone(),
            worker,
        };
        self.transitions.apply_to(task, event).await
    }
}
