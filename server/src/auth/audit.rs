//! The audit trail: one structured log line (target `reins::audit`) per StartTask, cancel
//! and AnswerTask, with who (principal, tenant), what (action, task id) and the outcome
//! (`ok`, or the error). Refused calls (no credentials, wrong role) are answered by the
//! auth layer and logged at debug level there; these lines are for what reached a task.

use super::Caller;
use crate::error::Error;
use crate::task::TaskId;

pub(crate) fn record<T>(
    caller: &Caller,
    action: &'static str,
    task: Option<TaskId>,
    result: &Result<T, Error>,
) {
    let task = task.map(|id| id.to_string()).unwrap_or_default();
    match result {
        Ok(_) => tracing::info!(
            target: "reins::audit",
            principal = %caller.name,
            tenant = %caller.tenant,
            action,
            task,
            outcome = "ok",
        ),
        Err(err) => tracing::info!(
            target: "reins::audit",
            principal = %caller.name,
            tenant = %caller.tenant,
            action,
            task,
            outcome = "refused",
            error = %err,
        ),
    }
}
