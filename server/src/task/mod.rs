//! The task record and its vocabulary: states, cancel information, progress.
//!
//! Everything here is plain data. How a record may change is decided by
//! [`state_machine`]; how cancels spread through a task tree by [`cancel`].

pub mod budget;
pub mod cancel;
pub mod checkpoints;
pub mod state_machine;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use budget::Usage;
pub use checkpoints::{CheckpointLimits, Checkpoints};

/// The longest duration the service accepts anywhere (a timeout, a grace period): the
/// range of `google.protobuf.Duration`, 10,000 years. Deadlines computed from it never
/// overflow the clock.
pub const MAX_DURATION: Duration = Duration::from_secs(315_576_000_000);

/// Task ids are UUIDv7: unique across replicas and ordered by creation time, which is the
/// order `ListActive` and the dispatch queue use.
pub type TaskId = Uuid;

/// JSON values carried by a task (params, checkpoints, results).
pub type Json = serde_json::Value;
pub type JsonMap = serde_json::Map<String, Json>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    Pending,
    Running,
    WaitingForAnswer,
    Completed,
    Failed,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 6] = [
        TaskState::Pending,
        TaskState::Running,
        TaskState::WaitingForAnswer,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    /// Terminal states are final: no event ever moves a task out of one.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Cancelled
        )
    }

    /// Running or waiting: the task's code exists somewhere and must be stopped to cancel it.
    pub fn is_started(self) -> bool {
        matches!(self, TaskState::Running | TaskState::WaitingForAnswer)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelMode {
    Soft,
    Hard,
}

/// What was asked of a task that is being (or was) cancelled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CancelInfo {
    pub mode: CancelMode,
    pub reason: String,
    pub requested_at: SystemTime,
    /// When a soft cancel escalates to hard; `None` for hard cancels and for tasks that
    /// were cancelled before they started.
    pub grace_deadline: Option<SystemTime>,
    /// The server hard-cancelled the task because the grace period ran out.
    pub escalated: bool,
    /// The cancel came from the task's own timeout: it ends FAILED, not CANCELLED.
    pub deadline_exceeded: bool,
    /// Where the cancel came from; empty for the server's own cancels.
    #[serde(default, skip_serializing_if = "CancelOrigin::is_empty")]
    pub origin: CancelOrigin,
    /// The server cancelled the task because its subtree reached this dimension's limit
    /// of its budget; empty otherwise.
    #[serde(default)]
    pub budget_exhausted: String,
    /// Who asked: the principal's name, or the replica's id for the cancels the server
    /// makes itself (timeout, escalation, parent finished, shutdown, lost replica).
    #[serde(default)]
    pub requested_by: String,
}

/// Who asked for a cancel: the replica that took the call, and the call's trace context
/// (W3C entries), which the span of the task's execution links to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CancelOrigin {
    pub replica: String,
    pub trace_context: BTreeMap<String, String>,
}

impl CancelOrigin {
    pub fn is_empty(&self) -> bool {
        self.replica.is_empty() && self.trace_context.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub fraction: f64,
    pub message: String,
}

/// The durable record of one task. `version` is bumped by one on every change and is the
/// compare-and-set token of the store. Serialized as JSON by the Redis store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    /// The tenant of the principal that started it; every RPC sees only its tenant's
    /// tasks. Records written before tenants existed belong to `default`.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// The principal that started it.
    #[serde(default)]
    pub created_by: String,
    pub kind: String,
    pub description: String,
    pub params: JsonMap,
    pub parent_id: Option<TaskId>,
    pub detached: bool,
    pub session_id: String,
    pub labels: BTreeMap<String, String>,
    pub request_id: String,
    pub timeout: Option<Duration>,
    /// How many times the task may be started; a lost run is retried while attempts remain.
    #[serde(default = "one")]
    pub max_attempts: u32,

    pub state: TaskState,
    /// Replica that runs (or ran) the task; empty until it starts.
    pub owner: String,
    /// How many times the task has been started; reports from an older attempt are fenced.
    pub attempt: u32,
    /// The worker running the task (`name/worker_id`); empty for built-in kinds.
    #[serde(default)]
    pub worker: String,
    pub version: u64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,

    pub progress: Progress,
    /// The newest checkpoints, oldest first, within [`CheckpointLimits`].
    pub partial_results: Checkpoints,
    /// Checkpoints reported but no longer (or never) kept: the oldest, dropped to stay
    /// within the limits, and any single one larger than the byte limit.
    #[serde(default)]
    pub partial_results_dropped: u64,
    pub result: Option<Json>,
    pub error: String,
    pub question: String,
    pub answer: String,
    pub cancel: Option<CancelInfo>,
    /// The W3C trace context (`traceparent`, `tracestate`, `baggage`) of the StartTask
    /// call: the parent of the task's execution span, on whichever replica runs it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trace_context: BTreeMap<String, String>,

    /// Limits per usage dimension over the task's whole subtree (see [`budget`]).
    #[serde(default)]
    pub budget: Usage,
    /// What the task itself reported spending.
    #[serde(default)]
    pub usage: Usage,
    /// What the task and every descendant (detached ones included) reported spending. The
    /// store keeps it beside the record: descendants add to it without a new version.
    #[serde(default)]
    pub subtree_usage: Usage,
    /// The task's ancestors, nearest first (at most [`budget::MAX_DEPTH`] − 1): where its
    /// usage is rolled up.
    #[serde(default)]
    pub ancestors: Vec<TaskId>,
    /// When the open question is answered for the task (`timed_out`) if nobody has.
    #[serde(default)]
    pub question_deadline: Option<SystemTime>,
    /// The last question was not answered in time: the task resumed without an answer.
    #[serde(default)]
    pub answer_timed_out: bool,
}

/// What a client asks for when it starts a task (already validated for shape).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewTask {
    /// The tenant and principal it is started for (set from the caller, not the request).
    pub tenant: String,
    pub created_by: String,
    pub kind: String,
    pub description: String,
    pub params: JsonMap,
    pub parent_id: Option<TaskId>,
    pub detached: bool,
    pub session_id: String,
    pub labels: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    pub request_id: String,
    /// At least 1.
    pub max_attempts: u32,
    /// The trace context of the call that starts the task.
    pub trace_context: BTreeMap<String, String>,
    pub budget: Usage,
    /// Set by the engine from the parent: the parent, then its ancestors.
    pub ancestors: Vec<TaskId>,
}

fn one() -> u32 {
    1
}

/// The connection id in a `Task.worker` label (`name/id`, the id a UUIDv7 in canonical
/// form, so later connections compare greater); `None` for built-in tasks.
pub fn connection_id(worker: &str) -> Option<&str> {
    worker
        .rsplit_once('/')
        .map(|(_, id)| id)
        .filter(|id| !id.is_empty())
}

fn default_tenant() -> String {
    "default".to_owned()
}

impl Task {
    /// A fresh PENDING record at version 1.
    pub fn new(id: TaskId, spec: NewTask, now: SystemTime) -> Task {
        Task {
            id,
            tenant: spec.tenant,
            created_by: spec.created_by,
            kind: spec.kind,
            description: spec.description,
            params: spec.params,
            parent_id: spec.parent_id,
            detached: spec.detached,
            session_id: spec.session_id,
            labels: spec.labels,
            request_id: spec.request_id,
            timeout: spec.timeout,
            max_attempts: spec.max_attempts.max(1),
            state: TaskState::Pending,
            owner: String::new(),
            attempt: 0,
            worker: String::new(),
            version: 1,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            progress: Progress::default(),
            partial_results: Checkpoints::default(),
            partial_results_dropped: 0,
            result: None,
            error: String::new(),
            question: String::new(),
            answer: String::new(),
            cancel: None,
            trace_context: spec.trace_context,
            usage: budget::zero_usage(&spec.budget),
            subtree_usage: budget::zero_usage(&spec.budget),
            budget: spec.budget,
            ancestors: spec.ancestors,
            question_deadline: None,
            answer_timed_out: false,
        }
    }

    /// When the task's timeout fires, if it has one and has started (and the sum exists).
    pub fn timeout_at(&self) -> Option<SystemTime> {
        self.started_at?.checked_add(self.timeout?)
    }

    /// Whether `next` may replace this record as far as ownership goes: the same owner and
    /// attempt (most changes), the start of the next attempt of a PENDING task, or a lost
    /// run put back in the queue. Stores refuse other writes, so a replica that lost a task cannot
    /// write to it, whatever version it read.
    pub fn fences_allow(&self, next: &Task) -> bool {
        let same_run = next.owner == self.owner && next.attempt == self.attempt;
        let started = self.state == TaskState::Pending && next.attempt == self.attempt + 1;
        let requeued = next.state == TaskState::Pending
            && next.owner.is_empty()
            && next.attempt == self.attempt;
        // A worker that moved to another replica took its task along (`Event::Adopt`), on
        // a newer connection: connection ids are UUIDv7, so a stale writer cannot pass its
        // own old connection off as a move.
        let moved = self.state.is_started()
            && next.state.is_started()
            && next.attempt == self.attempt
            && !next.owner.is_empty()
            && next.owner != self.owner
            && connection_id(&self.worker).is_some_and(|current| {
                connection_id(&next.worker).is_some_and(|moved_to| moved_to > current)
            });
        same_run || started || requeued || moved
    }

    /// Whether a start request (kind, params, tree position) describes this same task:
    /// the test for a repeated `request_id`.
    pub fn matches_request(&self, spec: &NewTask) -> bool {
        self.tenant == spec.tenant
            && self.kind == spec.kind
            && self.params == spec.params
            && self.parent_id == spec.parent_id
            && self.detached == spec.detached
    }
}
