//! The one domain error type. Every failure a caller can see is a variant here; the gRPC
//! layer maps each to a status code and a google.rpc `ErrorInfo` reason in one place
//! (`api::status`).

use crate::store::StoreError;
use crate::task::{TaskId, TaskState};

/// A problem with one field of a request, reported as a google.rpc `BadRequest` violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> FieldViolation {
        FieldViolation {
            field: field.into(),
            description: description.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("unknown task kind {0:?}")]
    KindUnknown(String),
    #[error("{0}")]
    ExecNotAllowed(String),
    #[error("task {0} not found")]
    TaskNotFound(TaskId),
    #[error("parent task {0} not found")]
    ParentNotFound(TaskId),
    #[error(
        "parent task {0} has already finished; start the child detached or under an active parent"
    )]
    ParentFinished(TaskId),
    #[error("task {id} is {state:?}, not waiting for an answer")]
    TaskNotWaiting { id: TaskId, state: TaskState },
    #[error(
        "request_id {request_id:?} was already used for task {existing} with a different kind, params or parent"
    )]
    RequestIdConflict {
        request_id: String,
        existing: TaskId,
    },
    #[error(
        "the history of task {id} no longer holds the versions after {after_version}; watch without after_version to start from the task as it is now"
    )]
    HistoryUnavailable { id: TaskId, after_version: u64 },
    #[error("worker protocol violation: {0}")]
    WorkerProtocol(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Error {
        Error::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
