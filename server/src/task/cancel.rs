//! Cancel rules that reach beyond one transition: what a cancel call reports, and how a
//! cancel spreads through a task tree.
//!
//! - Cancelling a task cancels all its active descendants in the same mode; their reason
//!   names the ancestor.
//! - When a task ends in any way, its active children that are not `detached` are
//!   soft-cancelled ("parent finished"). A detached child lives on.

use super::{Task, TaskId, TaskState};

/// What a cancel call did, as reported to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The task is CANCELLED (or FAILED by its own timeout) now.
    Cancelled,
    /// The task was asked to stop and will end at its next checkpoint or by escalation.
    Requested,
    AlreadyCancelled,
    AlreadyFinished,
}

impl CancelOutcome {
    /// The outcome of a cancel given the record before the call and after it.
    pub fn of(before: &Task, after: &Task) -> CancelOutcome {
        match before.state {
            TaskState::Cancelled => CancelOutcome::AlreadyCancelled,
            TaskState::Completed | TaskState::Failed => CancelOutcome::AlreadyFinished,
            _ if after.state.is_terminal() => CancelOutcome::Cancelled,
            _ => CancelOutcome::Requested,
        }
    }
}

/// Reason recorded on a descendant when an ancestor is cancelled.
pub fn ancestor_cancelled_reason(ancestor: TaskId, reason: &str) -> String {
    if reason.is_empty() {
        format!("ancestor {ancestor} cancelled")
    } else {
        format!("ancestor {ancestor} cancelled: {reason}")
    }
}

/// Reason recorded on an attached child whose parent reached a terminal state.
pub fn parent_finished_reason(parent: TaskId) -> String {
    format!("parent {parent} finished")
}

/// Whether `child` must be soft-cancelled because its parent has finished.
pub fn released_when_parent_finishes(child: &Task) -> bool {
    !child.detached && !child.state.is_terminal()
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::task::{NewTask, Task};

    fn task_in(state: TaskState) -> Task {
        let mut task = Task::new(TaskId::now_v7(), NewTask::default(), SystemTime::UNIX_EPOCH);
        task.state = state;
        task
    }

    #[test]
    fn outcome_reports_what_the_call_changed() {
        let pending = task_in(TaskState::Pending);
        let cancelled = task_in(TaskState::Cancelled);
        let running = task_in(TaskState::Running);
        assert_eq!(
            CancelOutcome::of(&pending, &cancelled),
            CancelOutcome::Cancelled
        );
        assert_eq!(
            CancelOutcome::of(&running, &running),
            CancelOutcome::Requested
        );
        assert_eq!(
            CancelOutcome::of(&cancelled, &cancelled),
            CancelOutcome::AlreadyCancelled
        );
        for finished in [TaskState::Completed, TaskState::Failed] {
            let task = task_in(finished);
            assert_eq!(
                CancelOutcome::of(&task, &task),
                CancelOutcome::AlreadyFinished
            );
        }
        // A task that timed out ends FAILED, but the call that ended it still cancelled it.
        let failed = task_in(TaskState::Failed);
        assert_eq!(
            CancelOutcome::of(&running, &failed),
            CancelOutcome::Cancelled
        );
    }

    #[test]
    fn only_active_attached_children_are_released() {
        let mut child = task_in(TaskState::Running);
        assert!(released_when_parent_finishes(&child));
        child.detached = true;
        assert!(!released_when_parent_finishes(&child));
        let done = task_in(TaskState::Completed);
        assert!(!released_when_parent_finishes(&done));
    }

    #[test]
    fn reasons_name_the_ancestor() {
        let id = TaskId::now_v7();
        assert_eq!(
            ancestor_cancelled_reason(id, "user"),
            format!("ancestor {id} cancelled: user")
        );
        assert_eq!(
            ancestor_cancelled_reason(id, ""),
            format!("ancestor {id} cancelled")
        );
        assert_eq!(parent_finished_reason(id), format!("parent {id} finished"));
    }
}
