//! The span of a task's execution, opened by the replica that runs it (the driver) as a
//! child of the StartTask call's context kept on the record, whichever replica took that
//! call and however long the task waited:
//!
//! - `reins.task.queued`, a span from `created_at` to `started_at` beside it (the queue
//!   wait, also the attribute `reins.task.queue_wait_ms` of the execution span);
//! - `reins.task.run` (kind CONSUMER), for as long as the driver runs: the worker's
//!   handler span is its child (through the assignment's `trace_context`); it records the
//!   events `cancel.requested` (mode, reason, replica), `cancel.escalated`, `checkpoint`,
//!   `question.asked`, `question.answered` and `task.finished` (the final state, also the
//!   attribute `reins.task.state`), and a link to the span of the cancel call.
//!
//! What a change of the record means for the span is [`changes`], a pure function.

use std::collections::BTreeMap;
use std::time::SystemTime;

use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer as _};
use opentelemetry::{KeyValue, global};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::grpc::state_name;
use crate::task::{CancelMode, Task};

/// Opens the execution span of `task` (just started on this replica); disabled when traces
/// are off or it would not be sampled.
pub fn execution_span(task: &Task) -> Span {
    if !super::enabled() || (task.trace_context.is_empty() && !super::roots_may_sample()) {
        return Span::none();
    }
    let parent = super::from_map(&task.trace_context);
    if !super::may_sample(&parent, "reins.task.run", SpanKind::Consumer) {
        return Span::none();
    }
    let queue_wait = task
        .started_at
        .and_then(|started| started.duration_since(task.created_at).ok());
    let span = tracing::info_span!(
        "task",
        otel.name = "reins.task.run",
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        reins.task.id = %task.id,
        reins.task.kind = %task.kind,
        reins.task.attempt = i64::from(task.attempt),
        reins.task.worker = %task.worker,
        reins.replica = %task.owner,
        reins.task.queue_wait_ms = queue_wait.map(|wait| wait.as_secs_f64() * 1e3),
        reins.task.state = tracing::field::Empty,
    );
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent.clone());
        if let Some(started) = task.started_at {
            queued_span(task, &parent, started);
        }
    }
    span
}

/// The queue wait as a span of its own, with the record's times.
fn queued_span(task: &Task, parent: &opentelemetry::Context, started: SystemTime) {
    let tracer = global::tracer(super::SCOPE);
    let mut span = tracer
        .span_builder("reins.task.queued")
        .with_kind(SpanKind::Internal)
        .with_start_time(task.created_at)
        .with_attributes([
            KeyValue::new("reins.task.id", task.id.to_string()),
            KeyValue::new("reins.task.kind", task.kind.clone()),
            KeyValue::new("reins.task.attempt", i64::from(task.attempt)),
        ])
        .start_with_context(&tracer, parent);
    span.end_with_timestamp(started.max(task.created_at));
}

/// Something the execution span records about a change of the record.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    CancelRequested {
        mode: CancelMode,
        reason: String,
        /// The replica that took the cancel call.
        replica: String,
        /// The context of the cancel call: linked from the execution span.
        link: BTreeMap<String, String>,
    },
    CancelEscalated,
    /// `reported`: how many checkpoints the task has reported so far.
    Checkpoint {
        reported: u64,
    },
    QuestionAsked,
    QuestionAnswered,
    Finished(crate::task::TaskState),
}

/// What changed between two versions of a record, as far as its execution span tells.
pub fn changes(before: &Task, after: &Task) -> Vec<Change> {
    let mut found = Vec::new();
    if let (None, Some(cancel)) = (&before.cancel, &after.cancel) {
        found.push(Change::CancelRequested {
            mode: cancel.mode,
            reason: cancel.reason.clone(),
            replica: cancel.origin.replica.clone(),
            link: cancel.origin.trace_context.clone(),
        });
    }
    let escalated = |task: &Task| task.cancel.as_ref().is_some_and(|cancel| cancel.escalated);
    if escalated(after) && !escalated(before) {
        found.push(Change::CancelEscalated);
    }
    let reported = |task: &Task| task.partial_results.end_position() + task.partial_results_dropped;
    if reported(after) > reported(before) {
        found.push(Change::Checkpoint {
            reported: reported(after),
        });
    }
    use crate::task::TaskState::WaitingForAnswer;
    if after.state == WaitingForAnswer && before.state != WaitingForAnswer {
        found.push(Change::QuestionAsked);
    }
    if before.state == WaitingForAnswer
        && after.state != WaitingForAnswer
        && !after.answer.is_empty()
    {
        found.push(Change::QuestionAnswered);
    }
    if after.state.is_terminal() && !before.state.is_terminal() {
        found.push(Change::Finished(after.state));
    }
    found
}

/// Records on the current span (the execution span) what changed from `before` to `after`.
pub fn record_changes(before: &Task, after: &Task) {
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    for change in changes(before, after) {
        match change {
            Change::CancelRequested {
                mode,
                reason,
                replica,
                link,
            } => {
                let mode = match mode {
                    CancelMode::Soft => "soft",
                    CancelMode::Hard => "hard",
                };
                let linked = super::from_map(&link);
                let linked = linked.span().span_context().clone();
                if linked.is_valid() {
                    span.add_link_with_attributes(
                        linked,
                        vec![KeyValue::new("reins.link", "cancel")],
                    );
                }
                span.add_event(
                    "cancel.requested",
                    vec![
                        KeyValue::new("reins.cancel.mode", mode),
                        KeyValue::new("reins.cancel.reason", reason),
                        KeyValue::new("reins.cancel.replica", replica),
                    ],
                );
            }
            Change::CancelEscalated => span.add_event("cancel.escalated", Vec::new()),
            Change::Checkpoint { reported } => span.add_event(
                "checkpoint",
                vec![KeyValue::new(
                    "reins.task.checkpoints",
                    i64::try_from(reported).unwrap_or(i64::MAX),
                )],
            ),
            Change::QuestionAsked => span.add_event("question.asked", Vec::new()),
            Change::QuestionAnswered => span.add_event("question.answered", Vec::new()),
            Change::Finished(state) => {
                span.record("reins.task.state", state_name(state));
                if state == crate::task::TaskState::Failed {
                    span.record("otel.status_code", "ERROR");
                }
                span.add_event(
                    "task.finished",
                    vec![KeyValue::new("reins.task.state", state_name(state))],
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
