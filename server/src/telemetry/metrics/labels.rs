//! The label sets of the task metrics, and the label value of each state, cancel mode and
//! cancel outcome.

use prometheus_client::encoding::EncodeLabelSet;

use crate::task::cancel::CancelOutcome;
use crate::task::{CancelMode, TaskState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KindLabel {
    pub(super) kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KindStateLabels {
    pub(super) kind: String,
    pub(super) state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct CancelLabels {
    pub(super) mode: &'static str,
    pub(super) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StopLabels {
    pub(super) mode: &'static str,
    pub(super) kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StateLabel {
    pub(super) state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct VersionLabel {
    pub(super) version: &'static str,
}

/// The `state` label of a task state.
pub(super) fn state_label(state: TaskState) -> &'static str {
    match state {
        TaskState::Pending => "pending",
        TaskState::Running => "running",
        TaskState::WaitingForAnswer => "waiting_for_answer",
        TaskState::Completed => "completed",
        TaskState::Failed => "failed",
        TaskState::Cancelled => "cancelled",
    }
}

pub(super) fn mode_label(mode: CancelMode) -> &'static str {
    match mode {
        CancelMode::Soft => "soft",
        CancelMode::Hard => "hard",
    }
}

pub(super) fn outcome_label(outcome: CancelOutcome) -> &'static str {
    match outcome {
        CancelOutcome::Cancelled => "cancelled",
        CancelOutcome::Requested => "requested",
        CancelOutcome::AlreadyCancelled => "already_cancelled",
        CancelOutcome::AlreadyFinished => "already_finished",
    }
}
