//! Remote workers: tasks of worker kinds run in worker processes connected to this replica
//! over `WorkerService.Connect` (see `api::worker_service`).
//!
//! The [`WorkerPool`] knows the workers connected here and their free slots. A
//! [`RemoteJob`] drives one task on one worker: it sends the assignment, turns the
//! worker's messages into the task context's reports (progress, ask, complete…) and the
//! context's signals into commands (a soft cancel becomes `cancel`, an answer `answer`).
//! Dropping the job (hard cancel, escalation, lost lease) sends `abort`, stops routing the
//! worker's messages about the task — they are ignored from then on — and frees the slot;
//! no `abort` is sent for a task that moved to another replica with its worker (the same
//! attempt, owned elsewhere), but one is for a task that was handed back to the queue or
//! started again while this replica could not see it.
//!
//! A draining replica asks its workers to reconnect elsewhere ([`WorkerPool::ask_to_reconnect`]);
//! the replica a worker reaches adopts the tasks its `hello` lists: a job made by
//! [`WorkerSlot::into_adopted_job`] sends no assignment, as the worker runs the task already.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use reins_proto::v1 as pb;
use reins_proto::v1::worker_command::Command;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tonic::Status;

use super::{Interrupted, Job, Outcome, TaskContext};
use crate::convert;
use crate::task::{Json, Task, TaskId, TaskState, Usage};
use crate::telemetry::metrics::WorkerKindOccupancy;

/// What a worker says about one of its tasks.
#[derive(Debug)]
pub enum WorkerEvent {
    Progress {
        fraction: f64,
        message: String,
        partial_result: Option<Json>,
        usage: Usage,
    },
    Ask {
        question: String,
        timeout: Option<Duration>,
    },
    Complete(Json),
    Fail(String),
    CancelAck(Json),
}

/// The commands sent down a worker's stream.
pub type Commands = mpsc::UnboundedSender<Result<pb::WorkerCommand, Status>>;

/// One connected worker process.
pub struct Worker {
    pub id: String,
    pub name: String,
    kinds: HashSet<String>,
    /// The only tenant whose tasks it receives; `None`: every tenant's (an admin's worker).
    tenant: Option<String>,
    slots: Arc<Semaphore>,
    /// How many tasks it runs at once (its slots, used or free).
    capacity: usize,
    commands: Commands,
    /// Where this worker's messages about each of its tasks go; `None` once the worker is
    /// gone, so a job attached after that learns at once that its worker is lost.
    tasks: Mutex<Option<HashMap<TaskId, mpsc::UnboundedSender<WorkerEvent>>>>,
}

impl Worker {
    pub fn new(
        id: String,
        name: String,
        kinds: HashSet<String>,
        tenant: Option<String>,
        max_concurrency: usize,
        commands: Commands,
    ) -> Worker {
        Worker {
            id,
            name,
            kinds,
            tenant,
            slots: Arc::new(Semaphore::new(max_concurrency)),
            capacity: max_concurrency,
            commands,
            tasks: Mutex::new(Some(HashMap::new())),
        }
    }

    fn tasks(&self) -> MutexGuard<'_, Option<HashMap<TaskId, mpsc::UnboundedSender<WorkerEvent>>>> {
        self.tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether this worker may run `task`: a kind it serves, of its tenant.
    pub fn may_run(&self, task: &Task) -> bool {
        self.kinds.contains(&task.kind)
            && self.tenant.as_ref().is_none_or(|own| *own == task.tenant)
    }

    /// `name/id`, as recorded on the tasks it runs.
    pub fn label(&self) -> String {
        format!("{}/{}", self.name, self.id)
    }

    /// Hands a message about `task` to the job driving it. False if the task is not (or no
    /// longer) this worker's: the caller ignores the message.
    pub fn deliver(&self, task: TaskId, event: WorkerEvent) -> bool {
        self.tasks()
            .as_ref()
            .and_then(|tasks| tasks.get(&task))
            .is_some_and(|job| job.send(event).is_ok())
    }

    /// The worker is gone: every job it was running learns so.
    pub fn disconnect(&self) {
        *self.tasks() = None;
    }

    /// Routes the worker's messages about `task` to `job`; if the worker is already gone
    /// (it left while the task was being started), `job` is dropped and its job sees the
    /// loss at once.
    fn attach(&self, task: TaskId, job: mpsc::UnboundedSender<WorkerEvent>) {
        if let Some(tasks) = self.tasks().as_mut() {
            tasks.insert(task, job);
        }
    }

    /// Stops routing the worker's messages about `task`.
    fn detach(&self, task: TaskId) {
        if let Some(tasks) = self.tasks().as_mut() {
            tasks.remove(&task);
        }
    }

    fn send(&self, command: Command) {
        let _ = self.commands.send(Ok(pb::WorkerCommand {
            command: Some(command),
        }));
    }
}

/// The workers connected to this replica.
#[derive(Default)]
pub struct WorkerPool {
    workers: Mutex<HashMap<String, Arc<Worker>>>,
}

impl WorkerPool {
    fn workers(&self) -> MutexGuard<'_, HashMap<String, Arc<Worker>>> {
        self.workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn add(&self, worker: Arc<Worker>) {
        self.workers().insert(worker.id.clone(), worker);
    }

    pub fn remove(&self, id: &str) {
        if let Some(worker) = self.workers().remove(id) {
            worker.disconnect();
        }
    }

    /// Whether a worker connected here serves `kind`.
    pub fn serves(&self, kind: &str) -> bool {
        self.workers()
            .values()
            .any(|worker| worker.kinds.contains(kind))
    }

    /// Every kind some worker connected here serves, once each.
    pub fn kinds(&self) -> Vec<String> {
        let workers = self.workers();
        let kinds: BTreeSet<&String> = workers.values().flat_map(|worker| &worker.kinds).collect();
        kinds.into_iter().cloned().collect()
    }

    /// Per kind served here: how many workers serve it and their used and free slots (a
    /// worker serving two kinds counts for both), in kind order.
    pub fn occupancy(&self) -> Vec<WorkerKindOccupancy> {
        let mut kinds: BTreeMap<&str, WorkerKindOccupancy> = BTreeMap::new();
        let workers = self.workers();
        for worker in workers.values() {
            let free = worker.slots.available_permits().min(worker.capacity);
            for kind in &worker.kinds {
                let occupancy = kinds.entry(kind).or_insert_with(|| WorkerKindOccupancy {
                    kind: kind.clone(),
                    ..WorkerKindOccupancy::default()
                });
                occupancy.workers += 1;
                occupancy.used += worker.capacity - free;
                occupancy.free += free;
            }
        }
        kinds.into_values().collect()
    }

    /// Tells every worker here to reconnect elsewhere (this replica is draining). Returns
    /// how many were told.
    pub fn ask_to_reconnect(&self, reason: &str) -> usize {
        let workers = self.workers();
        for worker in workers.values() {
            worker.send(Command::Reconnect(pb::WorkerReconnect {
                reason: reason.to_owned(),
            }));
        }
        workers.len()
    }

    /// Whether any worker here has a free slot.
    pub fn has_room(&self) -> bool {
        self.workers()
            .values()
            .any(|worker| worker.slots.available_permits() > 0)
    }

    /// A free slot on the least busy worker serving `kind` for `tenant`.
    pub fn reserve(&self, kind: &str, tenant: &str) -> Option<WorkerSlot> {
        let workers = self.workers();
        let worker = workers
            .values()
            .filter(|worker| worker.kinds.contains(kind))
            .filter(|worker| worker.tenant.as_ref().is_none_or(|own| own == tenant))
            .max_by_key(|worker| worker.slots.available_permits())?;
        let permit = Arc::clone(&worker.slots).try_acquire_owned().ok()?;
        Some(WorkerSlot {
            worker: Arc::clone(worker),
            permit,
            adopted: false,
        })
    }
}

/// A reserved place on a worker for one task.
pub struct WorkerSlot {
    worker: Arc<Worker>,
    permit: OwnedSemaphorePermit,
    /// The worker runs the task already (it moved here with it): no assignment is sent.
    adopted: bool,
}

impl WorkerSlot {
    /// A place on `worker` for a task it brought along from another replica, if it has one
    /// free (a worker lists at most its capacity).
    pub fn adopted(worker: &Arc<Worker>) -> Option<WorkerSlot> {
        let permit = Arc::clone(&worker.slots).try_acquire_owned().ok()?;
        Some(WorkerSlot {
            worker: Arc::clone(worker),
            permit,
            adopted: true,
        })
    }

    pub fn worker_label(&self) -> String {
        self.worker.label()
    }

    /// The job that runs task `id` on this worker, and the place it holds. The driver
    /// keeps the place until it has recorded the job's outcome: the worker's stream ends
    /// only once every place on it is given back, so a worker that half-closes right after
    /// its last report finds that report recorded when its stream ends.
    pub fn into_job(self, id: TaskId) -> (Box<dyn Job>, WorkerPlace) {
        let (events, events_rx) = mpsc::unbounded_channel();
        self.worker.attach(id, events);
        let job = Box::new(RemoteJob {
            id,
            worker: Arc::clone(&self.worker),
            events: events_rx,
            finished: false,
            record: None,
            adopted: self.adopted,
            owner: String::new(),
            attempt: 0,
        });
        let place = WorkerPlace {
            _worker: self.worker,
            _permit: self.permit,
        };
        (job, place)
    }
}

/// A task's place on a worker, held by its driver; dropping it frees the place and, with
/// the worker's last place, lets the worker's stream end.
pub struct WorkerPlace {
    _worker: Arc<Worker>,
    _permit: OwnedSemaphorePermit,
}

pub struct RemoteJob {
    id: TaskId,
    worker: Arc<Worker>,
    events: mpsc::UnboundedReceiver<WorkerEvent>,
    /// The worker ended the task itself: no abort is owed.
    finished: bool,
    /// The task as the driver last saw it, for the reason of an abort.
    record: Option<watch::Receiver<Task>>,
    /// The worker brought the task along: it needs no assignment.
    adopted: bool,
    /// This replica and the attempt it runs, as the job began: the same attempt owned by
    /// another replica since moved there with its worker, and owes no abort.
    owner: String,
    attempt: u32,
}

impl Job for RemoteJob {
    fn run(self: Box<Self>, ctx: TaskContext) -> BoxFuture<'static, Outcome> {
        Box::pin(self.drive(ctx))
    }
}

impl RemoteJob {
    async fn drive(mut self, ctx: TaskContext) -> Outcome {
        let task = ctx.current();
        let mut record = ctx.record();
        self.record = Some(ctx.record());
        self.owner.clone_from(&task.owner);
        self.attempt = task.attempt;
        if !self.adopted {
            let budget_remaining = convert::usage(&ctx.budget_remaining().await);
            self.worker.send(Command::Assign(pb::TaskAssignment {
                task: Some(convert::task(&task)),
                // The context of the execution span (the driver's): the worker's parent.
                trace_context: crate::telemetry::traces::current_context()
                    .into_iter()
                    .collect(),
                budget_remaining,
            }));
        }
        let mut cancel_sent = false;
        // The version that asked the worker's open question, if any (an adopted task may
        // be waiting for its answer already).
        let mut question: Option<u64> =
            (task.state == TaskState::WaitingForAnswer).then_some(task.version);
        loop {
            tokio::select! {
                event = self.events.recv() => {
                    let Some(event) = event else {
                        // The worker ended its stream: it is gone, or it moved to another
                        // replica with the task. Either way no abort is owed.
                        self.finished = true;
                        return Outcome::Lost(format!("worker {} was lost while running the task", self.worker.label()));
                    };
                    match event {
                        WorkerEvent::Progress { fraction, message, partial_result, usage } => {
                            let spent = !usage.is_empty();
                            let reported = ctx.report_progress(fraction, message, partial_result, usage).await;
                            if spent && reported.is_ok() {
                                // The agent may shrink its next request to what is left.
                                let budget_remaining = convert::usage(&ctx.budget_remaining().await);
                                self.worker.send(Command::UsageAck(pb::UsageAck { task_id: self.id.to_string(), budget_remaining }));
                            }
                        }
                        WorkerEvent::Ask { question: text, timeout } => match ctx.pose(text, timeout).await {
                            Ok(asked) => question = Some(asked),
                            Err(Interrupted::CancelRequested) if !cancel_sent => {
                                self.send_cancel(&ctx);
                                cancel_sent = true;
                            }
                            Err(_) => {}
                        },
                        WorkerEvent::Complete(result) => return self.finish(Outcome::Completed(result)),
                        WorkerEvent::Fail(error) => return self.finish(Outcome::Failed { error, result: None }),
                        WorkerEvent::CancelAck(result) => return self.finish(Outcome::Stopped(result)),
                    }
                }
                () = ctx.cancel_requested(), if !cancel_sent => {
                    self.send_cancel(&ctx);
                    cancel_sent = true;
                }
                Ok(()) = record.changed(), if question.is_some() => {
                    if let Some(answer) = question.and_then(|asked| ctx.answer_to(asked)) {
                        question = None;
                        if let Ok(answered) = answer {
                            self.worker.send(Command::Answer(pb::TaskAnswer {
                                task_id: self.id.to_string(),
                                answer: answered.answer,
                                timed_out: answered.timed_out,
                            }));
                        }
                    }
                }
            }
        }
    }

    /// The worker ended the task: no abort is owed, and its later messages are ignored.
    fn finish(&mut self, outcome: Outcome) -> Outcome {
        self.finished = true;
        self.worker.detach(self.id);
        outcome
    }

    fn send_cancel(&self, ctx: &TaskContext) {
        let cancel = ctx.current().cancel;
        self.worker.send(Command::Cancel(pb::CancelRequest {
            task_id: self.id.to_string(),
            // No cancel recorded: the replica is handing the task back as it shuts down.
            reason: cancel.as_ref().map_or_else(
                || "the replica is shutting down; the task goes back to the queue".to_owned(),
                |c| c.reason.clone(),
            ),
            grace_deadline: cancel
                .and_then(|c| c.grace_deadline)
                .map(prost_types::Timestamp::from),
        }));
    }
}

impl Drop for RemoteJob {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Dropped before the worker ended the task: it was hard-cancelled (or settled
        // elsewhere). Stop routing its messages and tell the worker to stop now — unless
        // the task moved to another replica with the worker, which runs it on.
        self.worker.detach(self.id);
        // Moved: another replica owns this very attempt (an adoption). A task handed back
        // to the queue (no owner) or started again (a later attempt) while this replica
        // could not see it — frozen, cut off from the store — has not moved: its worker
        // still runs the old attempt and must stop.
        let moved = self.record.as_ref().is_some_and(|record| {
            let task = record.borrow();
            !task.owner.is_empty() && task.owner != self.owner && task.attempt == self.attempt
        });
        if moved {
            return;
        }
        let reason = self
            .record
            .as_ref()
            .and_then(|record| {
                // The cancel's reason, or why the task failed (a report over a limit).
                let task = record.borrow();
                match &task.cancel {
                    Some(cancel) => Some(cancel.reason.clone()),
                    None => (!task.error.is_empty()).then(|| task.error.clone()),
                }
            })
            .unwrap_or_else(|| "the task ended elsewhere".to_owned());
        self.worker.send(Command::Abort(pb::AbortTask {
            task_id: self.id.to_string(),
            reason,
        }));
    }
}
