//! The engine: turns requests into state-machine events, persists each change with one
//! compare-and-set, and applies the rules that reach beyond one task (subtree cancels,
//! "parent finished", dispatch onto this replica's supervisor).
//!
//! Data flows one way: a command is decided by [`state_machine::apply`], stored by the
//! [`TaskStore`] and published; the supervisor's drivers react to the published change
//! (stop the code, signal a soft cancel, deliver an answer). The engine never reaches into
//! a running job.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::{Stream, StreamExt};

use crate::error::{Error, Result};
use crate::executor::Kinds;
use crate::executor::remote::WorkerPool;
use crate::store::{ActiveFilter, Created, Swap, TaskStore, Update, Updates};
use crate::supervisor::Placement;
use crate::supervisor::Supervisor;
use crate::task::cancel::{self, CancelOutcome};
use crate::task::state_machine::{self, Event, Fence, Rejection, Report};
use crate::task::{NewTask, Task, TaskId, TaskState};

/// How long a hard cancel waits for local code to stop before it returns anyway.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// How many queued tasks one dispatch round reads at a time.
const DISPATCH_BATCH: usize = 64;
/// How far down the queue one dispatch round looks for tasks it can place.
const DISPATCH_SCAN: usize = 4096;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub replica_id: String,
    pub default_grace: Duration,
    pub max_concurrency: usize,
    /// Kinds served by workers that StartTask accepts before any worker has connected.
    pub worker_kinds: Vec<String>,
}

pub struct Engine {
    config: EngineConfig,
    store: Arc<dyn TaskStore>,
    kinds: Kinds,
    workers: WorkerPool,
    supervisor: Supervisor,
    draining: AtomicBool,
    /// Held while a dispatch round runs; see [`Engine::dispatch`].
    dispatching: tokio::sync::Mutex<()>,
    dispatch_wanted: AtomicBool,
}

/// What a cancel call asks for.
#[derive(Clone, Copy, Debug)]
pub enum CancelRequest {
    Soft { grace: Duration },
    Hard,
}

/// The result of one event on one task. Short-lived, so the records are not boxed.
#[allow(clippy::large_enum_variant)]
enum Applied {
    Changed { before: Task, after: Task },
    Unchanged(Task),
    Rejected(Task, Rejection),
}

/// One page of `ListActive`.
pub struct Page {
    pub tasks: Vec<Task>,
    /// Where the next page starts, if there is one.
    pub next_after: Option<TaskId>,
}

fn now() -> SystemTime {
    SystemTime::now()
}

impl Engine {
    pub fn new(config: EngineConfig, store: Arc<dyn TaskStore>, kinds: Kinds) -> Arc<Engine> {
        Arc::new(Engine {
            supervisor: Supervisor::new(config.max_concurrency),
            config,
            store,
            kinds,
            workers: WorkerPool::default(),
            draining: AtomicBool::new(false),
            dispatching: tokio::sync::Mutex::new(()),
            dispatch_wanted: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn kinds(&self) -> &Kinds {
        &self.kinds
    }

    pub fn store(&self) -> &dyn TaskStore {
        self.store.as_ref()
    }

    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Creates a task (or returns the one already created with its `request_id`) and starts
    /// it at once if this replica has room; otherwise it waits PENDING in the queue.
    pub async fn start(self: &Arc<Self>, spec: NewTask) -> Result<Task> {
        if self.is_draining() {
            return Err(Error::ShuttingDown);
        }
        self.check_kind(&spec).await?;
        if let Some(parent_id) = spec.parent_id {
            let parent = self
                .store
                .get(parent_id)
                .await?
                .ok_or(Error::ParentNotFound(parent_id))?;
            if parent.state.is_terminal() && !spec.detached {
                return Err(Error::ParentFinished(parent_id));
            }
        }
        let task = Task::new(TaskId::now_v7(), spec.clone(), now());
        match self.store.create(task).await? {
            Created::New(task) => {
                let task = self.start_if_first(task).await?;
                if task.state == TaskState::Pending {
                    // This replica is full: wake the others. (Announcing every start would
                    // have them race this replica for work it can take itself.)
                    if let Err(err) = self.store.announce_queued().await {
                        tracing::warn!(%err, "cannot wake the other replicas; they look every few seconds");
                    }
                }
                Ok(task)
            }
            Created::Existing(existing) if existing.matches_request(&spec) => Ok(existing),
            Created::Existing(existing) => Err(Error::RequestIdConflict {
                request_id: spec.request_id,
                existing: existing.id,
            }),
        }
    }

    /// Starts a new task here at once if nothing older waits and this replica has room
    /// (no queue to contend for); otherwise lets the dispatcher take the oldest first.
    async fn start_if_first(self: &Arc<Self>, task: Task) -> Result<Task> {
        let oldest = self.store.oldest_pending(None, 1).await?;
        if oldest.first().is_some_and(|oldest| oldest.id != task.id) {
            self.dispatch_rounds(true).await;
        } else if let Some(placement) = self.place(&task) {
            let event = Event::Start {
                owner: self.config.replica_id.clone(),
                worker: placement.worker_label(),
            };
            if let Applied::Changed { after, .. } = self.apply(task.id, event).await? {
                self.supervisor
                    .launch(Arc::clone(self), after.clone(), placement);
                return Ok(after);
            }
        }
        Ok(self.store.get(task.id).await?.unwrap_or(task))
    }

    pub async fn check(&self, id: TaskId) -> Result<Task> {
        self.store.get(id).await?.ok_or(Error::TaskNotFound(id))
    }

    pub async fn answer(self: &Arc<Self>, id: TaskId, answer: String) -> Result<Task> {
        match self.apply(id, Event::Answer { answer }).await? {
            Applied::Changed { after, .. } => Ok(after),
            Applied::Unchanged(task) | Applied::Rejected(task, _) => Err(Error::TaskNotWaiting {
                id,
                state: task.state,
            }),
        }
    }

    /// Cancels a task and all its active descendants in the same mode. A hard cancel returns
    /// once the task is CANCELLED and its local code has stopped.
    pub async fn cancel(
        self: &Arc<Self>,
        id: TaskId,
        request: CancelRequest,
        reason: String,
    ) -> Result<(Task, CancelOutcome)> {
        let root = self.check(id).await?;
        if root.state.is_terminal() {
            return Ok((root.clone(), CancelOutcome::of(&root, &root)));
        }
        // Deepest first: when a task ends, its own descendants are already settled with the
        // ancestor's mode and reason, so its end cannot release them as "parent finished".
        let mut descendants = self.active_descendants(id).await?;
        descendants.reverse();
        let descendant_reason = cancel::ancestor_cancelled_reason(id, &reason);
        for descendant in &descendants {
            if let Err(err) = self
                .cancel_one(descendant.id, request, descendant_reason.clone())
                .await
            {
                tracing::warn!(task = %descendant.id, ancestor = %id, %err, "cancelling a descendant failed");
            }
        }
        let (before, after) = match self.cancel_one(id, request, reason).await? {
            Applied::Changed { before, after } => (before, after),
            Applied::Unchanged(task) | Applied::Rejected(task, _) => (task.clone(), task),
        };
        if matches!(request, CancelRequest::Hard) {
            for task in descendants.iter().chain([&after]) {
                self.supervisor.wait_stopped(task.id, STOP_WAIT).await;
            }
        }
        Ok((after.clone(), CancelOutcome::of(&before, &after)))
    }

    async fn cancel_one(
        self: &Arc<Self>,
        id: TaskId,
        request: CancelRequest,
        reason: String,
    ) -> Result<Applied> {
        let event = match request {
            CancelRequest::Soft { grace } => Event::SoftCancel { reason, grace },
            CancelRequest::Hard => Event::HardCancel { reason },
        };
        self.apply(id, event).await
    }

    /// Every active task below `root`, breadth first (parents before children). Finished
    /// tasks are walked through: a detached grandchild may outlive its parent.
    async fn active_descendants(&self, root: TaskId) -> Result<Vec<Task>> {
        let mut found = Vec::new();
        let mut frontier = VecDeque::from([root]);
        while let Some(parent) = frontier.pop_front() {
            for child in self.store.children(parent).await? {
                frontier.push_back(child.id);
                if !child.state.is_terminal() {
                    found.push(child);
                }
            }
        }
        Ok(found)
    }

    pub async fn list_active(
        &self,
        filter: &ActiveFilter,
        after: Option<TaskId>,
        page_size: usize,
    ) -> Result<Page> {
        let mut tasks = self.store.list_active(filter, after, page_size + 1).await?;
        let next_after = if tasks.len() > page_size {
            tasks.truncate(page_size);
            tasks.last().map(|task| task.id)
        } else {
            None
        };
        Ok(Page { tasks, next_after })
    }

    /// The task's versions in order: from the one after `after_version` (a resume, replayed
    /// from the history), or from the task as it is now; ends after the terminal version.
    /// Versions missed on the way (a reconnect, a slow watcher) are filled in from the
    /// history.
    pub async fn watch(
        &self,
        id: TaskId,
        after_version: Option<u64>,
    ) -> Result<impl Stream<Item = Task> + Send + 'static> {
        let updates = self.store.subscribe(id).await?;
        let current = self.check(id).await?;
        // A finished task changes no more: nothing but what is already stored will come.
        let updates: Updates = if current.state.is_terminal() {
            Box::pin(futures_util::stream::empty())
        } else {
            updates
        };
        let backlog: VecDeque<Task> = match after_version {
            None => VecDeque::from([current]),
            Some(after) => self
                .store
                .history(id, after)
                .await?
                .ok_or(Error::HistoryUnavailable {
                    id,
                    after_version: after,
                })?
                .into(),
        };
        let state = WatchState {
            id,
            store: Arc::clone(&self.store),
            updates,
            backlog,
            last_version: after_version.unwrap_or(0),
            finished: false,
        };
        Ok(futures_util::stream::unfold(state, WatchState::step))
    }

    /// Applies a report from a job's running code.
    pub(crate) async fn report(
        self: &Arc<Self>,
        id: TaskId,
        fence: &Fence,
        report: Report,
    ) -> Result<Task, ReportError> {
        let event = Event::Report {
            fence: fence.clone(),
            report,
        };
        match self.apply(id, event).await {
            Ok(Applied::Changed { after, .. }) => Ok(after),
            Ok(Applied::Unchanged(task)) => Ok(task),
            Ok(Applied::Rejected(_, rejection)) => Err(ReportError::Rejected(rejection)),
            Err(Error::TaskNotFound(_)) => Err(ReportError::Rejected(Rejection::Fenced)),
            Err(err) => {
                tracing::warn!(task = %id, %err, "a report could not be stored yet");
                Err(ReportError::Unavailable)
            }
        }
    }

    /// Applies a report, retrying while the store is unreachable: a result is never lost
    /// to an outage. Returns once it is stored or refused.
    pub(crate) async fn report_until_stored(
        self: &Arc<Self>,
        id: TaskId,
        fence: &Fence,
        report: Report,
    ) -> Result<Task, Rejection> {
        let mut backoff = Backoff::default();
        loop {
            match self.report(id, fence, report.clone()).await {
                Ok(task) => return Ok(task),
                Err(ReportError::Rejected(rejection)) => return Err(rejection),
                Err(ReportError::Unavailable) => backoff.wait().await,
            }
        }
    }

    /// The grace period of a soft cancel ran out. Returns the record after the attempt,
    /// `None` if the store could not be reached.
    pub(crate) async fn escalate(self: &Arc<Self>, id: TaskId) -> Option<Task> {
        self.apply_settling(id, Event::Escalate).await
    }

    /// The task ran past its timeout. Returns the record after the attempt, `None` if the
    /// store could not be reached.
    pub(crate) async fn time_out(self: &Arc<Self>, id: TaskId) -> Option<Task> {
        let event = Event::TimeOut {
            grace: self.config.default_grace,
        };
        self.apply_settling(id, event).await
    }

    /// Settles the started tasks of a replica that lost its lease (or of this replica's
    /// previous life, at start-up). Returns how many were settled.
    pub async fn settle_lost_owner(self: &Arc<Self>, owner: &str) -> Result<usize> {
        let mut settled = 0;
        for task in self.store.owned_by(owner).await? {
            let event = Event::OwnerLost {
                owner: owner.to_owned(),
            };
            if let Applied::Changed { after, .. } = self.apply(task.id, event).await? {
                tracing::warn!(task = %task.id, %owner, state = ?after.state, "settled a task of a lost replica");
                settled += 1;
            }
        }
        Ok(settled)
    }

    async fn apply_settling(self: &Arc<Self>, id: TaskId, event: Event) -> Option<Task> {
        match self.apply(id, event).await {
            Ok(
                Applied::Changed { after: task, .. }
                | Applied::Unchanged(task)
                | Applied::Rejected(task, _),
            ) => Some(task),
            Err(err) => {
                tracing::warn!(task = %id, %err, "a deadline could not be stored yet");
                None
            }
        }
    }

    /// Reads, decides, compare-and-sets; again on a conflict. A change to a terminal state
    /// releases the task's attached children.
    async fn apply(self: &Arc<Self>, id: TaskId, event: Event) -> Result<Applied> {
        loop {
            let before = self.check(id).await?;
            let after = match state_machine::apply(&before, &event, now()) {
                Ok(Some(after)) => after,
                Ok(None) => return Ok(Applied::Unchanged(before)),
                Err(rejection) => return Ok(Applied::Rejected(before, rejection)),
            };
            match self.store.compare_and_swap(&after).await? {
                Swap::Swapped => {
                    if after.state == TaskState::Pending && before.state != TaskState::Pending {
                        // A lost run went back to the queue: any replica with room may take it.
                        if let Err(err) = self.store.announce_queued().await {
                            tracing::warn!(%err, "cannot announce a requeued task");
                        }
                    }
                    if after.state.is_terminal() {
                        tracing::info!(task = %id, state = ?after.state, "task finished");
                        Box::pin(self.release_children(&after)).await;
                    }
                    return Ok(Applied::Changed { before, after });
                }
                Swap::Conflict => {
                    // Either another write won (decide again on the new version) or the
                    // store refused this one outright (fencing): then nothing moved.
                    if self.check(id).await?.version == before.version {
                        tracing::warn!(task = %id, "the store refused a change nothing raced with");
                        return Ok(Applied::Rejected(before, Rejection::Fenced));
                    }
                    continue;
                }
                Swap::Missing => return Err(Error::TaskNotFound(id)),
            }
        }
    }

    /// Soft-cancels the active attached children of a task that has finished.
    async fn release_children(self: &Arc<Self>, parent: &Task) {
        let children = match self.store.children(parent.id).await {
            Ok(children) => children,
            Err(err) => {
                tracing::warn!(task = %parent.id, %err, "cannot release the children of a finished task");
                return;
            }
        };
        let request = CancelRequest::Soft {
            grace: self.config.default_grace,
        };
        for child in children
            .iter()
            .filter(|child| cancel::released_when_parent_finishes(child))
        {
            let reason = cancel::parent_finished_reason(parent.id);
            if let Err(err) = self.cancel_one(child.id, request, reason).await {
                tracing::warn!(task = %child.id, %err, "releasing a child failed");
            }
        }
    }

    /// Starts the oldest PENDING tasks while this replica has room.
    ///
    /// Single-flight: one round runs at a time per replica. A call while a round runs
    /// only asks for another round, so concurrent callers (every StartTask, every task that
    /// ends) do not all race for the same oldest task.
    pub(crate) async fn dispatch(self: &Arc<Self>) {
        self.dispatch_rounds(false).await;
    }

    /// Requests a round and, unless `wait`, returns at once if one is running (it will run
    /// another). With `wait` it returns only after a round that started after the request
    /// (StartTask wants to answer RUNNING when its task got a place).
    async fn dispatch_rounds(self: &Arc<Self>, wait: bool) {
        self.dispatch_wanted.store(true, Ordering::SeqCst);
        loop {
            let round = if wait {
                self.dispatching.lock().await
            } else {
                match self.dispatching.try_lock() {
                    Ok(round) => round,
                    Err(_) => return,
                }
            };
            while self.dispatch_wanted.swap(false, Ordering::SeqCst) {
                self.dispatch_round().await;
            }
            drop(round);
            // A request made between the last round and the unlock found the lock taken.
            if !self.dispatch_wanted.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    /// One pass over the queue, oldest first, starting every task this replica can place
    /// while it has room. Tasks it cannot place (no worker for their kind here, another
    /// exec allowlist) are passed over, so they do not hold up the rest.
    async fn dispatch_round(self: &Arc<Self>) {
        let mut after = None;
        let mut scanned = 0;
        while !self.is_draining()
            && (self.supervisor.has_room() || self.workers.has_room())
            && scanned < DISPATCH_SCAN
        {
            let page = match self.store.oldest_pending(after, DISPATCH_BATCH).await {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(%err, "cannot read the dispatch queue");
                    return;
                }
            };
            let Some(last) = page.last() else { return };
            after = Some(last.id);
            scanned += page.len();
            let exhausted = page.len() < DISPATCH_BATCH;
            for candidate in page {
                let Some(placement) = self.place(&candidate) else {
                    continue;
                };
                let event = Event::Start {
                    owner: self.config.replica_id.clone(),
                    worker: placement.worker_label(),
                };
                if let Ok(Applied::Changed { after, .. }) = self.apply(candidate.id, event).await {
                    self.supervisor.launch(Arc::clone(self), after, placement);
                }
            }
            if exhausted {
                return;
            }
        }
    }

    /// Where a queued task would run on this replica, with the place reserved.
    fn place(&self, task: &Task) -> Option<Placement> {
        match self.kinds.get(&task.kind) {
            Ok(kind) => {
                let job = kind.prepare(&task.params).ok()?;
                Some(Placement::Local(self.supervisor.try_reserve()?, job))
            }
            Err(_) => self.workers.reserve(&task.kind).map(Placement::Worker),
        }
    }

    /// A kind is valid if it is built in (then its params are checked), declared with
    /// `--worker-kind`, or served by a worker connected to any replica now or before.
    async fn check_kind(&self, spec: &NewTask) -> Result<()> {
        if let Ok(kind) = self.kinds.get(&spec.kind) {
            return kind.prepare(&spec.params).map(drop);
        }
        if self.config.worker_kinds.contains(&spec.kind)
            || self.workers.serves(&spec.kind)
            || self.store.is_worker_kind(&spec.kind).await?
        {
            return Ok(());
        }
        Err(Error::KindUnknown(spec.kind.clone()))
    }

    pub fn workers(&self) -> &WorkerPool {
        &self.workers
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Graceful shutdown: refuse new tasks, give running ones `grace` to finish, then
    /// soft-cancel them with `soft_window` to stop before they are hard-cancelled.
    pub async fn drain(self: &Arc<Self>, grace: Duration, soft_window: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        if self.supervisor.wait_idle(grace).await {
            return;
        }
        let reason = "server shutting down".to_owned();
        let running = self.supervisor.running();
        tracing::info!(
            tasks = running.len(),
            "soft-cancelling the tasks still running"
        );
        for &id in &running {
            let _ = self
                .cancel(
                    id,
                    CancelRequest::Soft { grace: soft_window },
                    reason.clone(),
                )
                .await;
        }
        // Escalation at the end of the soft window hard-cancels whatever is left; the
        // explicit hard cancel below only covers tasks that raced past it.
        if self
            .supervisor
            .wait_idle(soft_window + Duration::from_millis(500))
            .await
        {
            return;
        }
        for id in self.supervisor.running() {
            let _ = self.cancel(id, CancelRequest::Hard, reason.clone()).await;
        }
    }
}

struct WatchState {
    id: TaskId,
    store: Arc<dyn TaskStore>,
    updates: Updates,
    /// Versions to yield before reading more updates.
    backlog: VecDeque<Task>,
    last_version: u64,
    finished: bool,
}

impl WatchState {
    async fn step(mut self) -> Option<(Task, WatchState)> {
        while !self.finished {
            if let Some(task) = self.backlog.pop_front() {
                if task.version > self.last_version {
                    self.last_version = task.version;
                    // The terminal version is the last one yielded.
                    self.finished = task.state.is_terminal();
                    return Some((task, self));
                }
                continue;
            }
            match self.updates.next().await {
                Some(Update::Changed(task)) if task.version <= self.last_version + 1 => {
                    self.backlog.push_back(Task::clone(&task));
                }
                // A gap, a lag or a reconnect: catch up from the history.
                Some(Update::Changed(_) | Update::Lagged) => self.catch_up().await,
                None => {
                    // The update stream closed: whatever is left is in the history.
                    self.catch_up().await;
                    if self.backlog.is_empty() {
                        return None;
                    }
                }
            }
        }
        None
    }

    /// Queues every version after the last one yielded: from the history, or just the
    /// latest record if the history no longer reaches back that far.
    async fn catch_up(&mut self) {
        match self.store.history(self.id, self.last_version).await {
            Ok(Some(versions)) => self.backlog.extend(versions),
            _ => {
                if let Ok(Some(latest)) = self.store.get(self.id).await {
                    tracing::warn!(task = %self.id, from = self.last_version, to = latest.version, "a watcher skipped versions its history no longer holds");
                    self.backlog.push_back(latest);
                }
            }
        }
    }
}

/// Why a job's report was not stored.
#[derive(Debug)]
pub enum ReportError {
    /// Refused: the task ended or is fenced. The code must stop.
    Rejected(Rejection),
    /// The store could not be reached; the report may be retried.
    Unavailable,
}

/// Exponential backoff for retries against an unreachable store: 50 ms doubling to 2 s.
#[derive(Default)]
pub(crate) struct Backoff {
    attempts: u32,
}

impl Backoff {
    pub(crate) async fn wait(&mut self) {
        let delay = Duration::from_millis(50 << self.attempts.min(5)).min(Duration::from_secs(2));
        self.attempts += 1;
        tokio::time::sleep(delay).await;
    }
}
