//! Domain → protobuf: how a task and its vocabulary look on the wire. Shared by the api
//! (responses, watch events) and the remote executor (assignments to workers), neither of
//! which depends on the other.

use std::time::SystemTime;

use reins_proto::json::{json_to_struct, json_to_value};
use reins_proto::v1 as pb;

use crate::task::cancel::CancelOutcome;
use crate::task::{CancelInfo, CancelMode, Task, TaskState, Usage};

pub fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

/// How much of a task a read returns (AIP-157 views).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Without `params`, `partial_results` and `result`: the bounded, small part of a task,
    /// what `ListActive` returns unless asked for more.
    Basic,
    Full,
}

/// The whole task.
pub fn task(task: &Task) -> pb::Task {
    task_view(task, View::Full)
}

/// The task in `view`: BASIC leaves the large fields empty without converting them.
pub fn task_view(task: &Task, view: View) -> pb::Task {
    let full = view == View::Full;
    pb::Task {
        id: task.id.to_string(),
        kind: task.kind.clone(),
        description: task.description.clone(),
        state: state(task.state) as i32,
        params: full.then(|| json_to_struct(&task.params)),
        parent_id: task.parent_id.map(|id| id.to_string()).unwrap_or_default(),
        detached: task.detached,
        session_id: task.session_id.clone(),
        labels: task.labels.clone().into_iter().collect(),
        owner: task.owner.clone(),
        created_at: Some(timestamp(task.created_at)),
        started_at: task.started_at.map(timestamp),
        finished_at: task.finished_at.map(timestamp),
        progress: Some(pb::Progress {
            fraction: task.progress.fraction,
            message: task.progress.message.clone(),
        }),
        partial_results: if full {
            let values = task.partial_results.values();
            values.iter().map(|value| json_to_value(value)).collect()
        } else {
            Vec::new()
        },
        partial_results_dropped: task.partial_results_dropped,
        trace_id: crate::telemetry::traces::trace_id(&task.trace_context).unwrap_or_default(),
        result: task.result.as_ref().filter(|_| full).map(json_to_value),
        error: task.error.clone(),
        question: task.question.clone(),
        cancel: task.cancel.as_ref().map(cancel_info),
        version: task.version,
        timeout: task
            .timeout
            .and_then(|t| prost_types::Duration::try_from(t).ok()),
        request_id: task.request_id.clone(),
        answer: task.answer.clone(),
        attempt: task.attempt,
        max_attempts: task.max_attempts,
        worker: task.worker.clone(),
        usage: usage(&task.usage),
        subtree_usage: usage(&task.subtree_usage),
        budget: usage(&task.budget),
        answer_timed_out: task.answer_timed_out,
        question_deadline: task.question_deadline.map(timestamp),
        tenant: task.tenant.clone(),
        created_by: task.created_by.clone(),
    }
}

/// Amounts per dimension as a protobuf map.
pub fn usage(usage: &Usage) -> std::collections::HashMap<String, f64> {
    usage.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

fn cancel_info(cancel: &CancelInfo) -> pb::CancelInfo {
    pb::CancelInfo {
        mode: match cancel.mode {
            CancelMode::Soft => pb::CancelMode::Soft,
            CancelMode::Hard => pb::CancelMode::Hard,
        } as i32,
        reason: cancel.reason.clone(),
        requested_at: Some(timestamp(cancel.requested_at)),
        grace_deadline: cancel.grace_deadline.map(timestamp),
        escalated: cancel.escalated,
        deadline_exceeded: cancel.deadline_exceeded,
        budget_exhausted: cancel.budget_exhausted.clone(),
        requested_by: cancel.requested_by.clone(),
    }
}

pub fn state(state: TaskState) -> pb::TaskState {
    match state {
        TaskState::Pending => pb::TaskState::Pending,
        TaskState::Running => pb::TaskState::Running,
        TaskState::WaitingForAnswer => pb::TaskState::WaitingForAnswer,
        TaskState::Completed => pb::TaskState::Completed,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Cancelled => pb::TaskState::Cancelled,
    }
}

pub fn cancel_outcome(outcome: CancelOutcome) -> pb::CancelOutcome {
    match outcome {
        CancelOutcome::Cancelled => pb::CancelOutcome::Cancelled,
        CancelOutcome::Requested => pb::CancelOutcome::Requested,
        CancelOutcome::AlreadyCancelled => pb::CancelOutcome::AlreadyCancelled,
        CancelOutcome::AlreadyFinished => pb::CancelOutcome::AlreadyFinished,
    }
}
