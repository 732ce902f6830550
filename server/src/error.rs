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

/// How many characters of a client's value an error message repeats. Echoing a whole
/// 20 kB id or kind would push the reply past the client's metadata limit.
pub const ECHO_CHARS: usize = 64;

/// A client-supplied text cut to [`ECHO_CHARS`] characters, with `…` if it was longer.
pub fn shorten(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(ECHO_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]).into(),
        None => text.into(),
    }
}

/// A client-supplied value as an error message shows it: quoted and [`shorten`]ed.
pub struct Echo<'a>(pub &'a str);

impl std::fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(ECHO_CHARS) {
            Some((cut, _)) => write!(f, "{:?}…", &self.0[..cut]),
            None => write!(f, "{:?}", self.0),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("unknown task kind {}", Echo(.0))]
    KindUnknown(String),
    /// A `hello` named a kind the operator did not declare, on a server that learns no
    /// kinds from workers.
    #[error(
        "kind {} is not declared on this server (--worker-kind), and it learns no kinds from workers",
        Echo(.0)
    )]
    KindNotDeclared(String),
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
    #[error(
        "parent task {parent} is at the deepest level a task tree may have ({max} levels)",
        max = crate::task::budget::MAX_DEPTH
    )]
    TreeTooDeep { parent: TaskId },
    #[error("cannot start a task under {ancestor}: its {reason}")]
    BudgetExhausted { ancestor: TaskId, reason: String },
    #[error(
        "session {} was cancelled (CancelTasks) and takes no new task for a while",
        Echo(.0)
    )]
    SessionCancelled(String),
    #[error("task {id} is {state:?}, not waiting for an answer")]
    TaskNotWaiting { id: TaskId, state: TaskState },
    #[error(
        "request_id {} was already used for task {existing} with a different kind, params or parent",
        Echo(request_id)
    )]
    RequestIdConflict {
        request_id: String,
        existing: TaskId,
    },
    #[error(
        "the history of task {id} no longer holds the versions after {after_version}; watch without after_version to start from the task as it is now"
    )]
    HistoryUnavailable { id: TaskId, after_version: u64 },
    #[error(
        "task {id} is at version {current}; after_version {after_version} is ahead of it (resume from a version a watch of this task returned)"
    )]
    VersionAhead {
        id: TaskId,
        after_version: u64,
        current: u64,
    },
    /// The request's bytes are not a valid protobuf message of the method's request type.
    #[error("the request does not decode: {0}")]
    Undecodable(String),
    #[error("{0}")]
    MessageTooLarge(String),
    #[error("worker protocol violation: {0}")]
    WorkerProtocol(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// No credentials, or credentials that name no principal.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("{principal} may not call {method}: it needs the {role} role")]
    RoleRequired {
        principal: String,
        role: &'static str,
        method: String,
    },
    /// A tenant's quota (`[[tenant]]` of the auth config) is used up.
    #[error("tenant {tenant} is at its {quota} quota ({limit})")]
    QuotaExceeded {
        tenant: String,
        quota: &'static str,
        limit: String,
        /// When trying again may succeed (a start rate); `None`: once something ends.
        retry_after: Option<std::time::Duration>,
    },
    /// A worker principal's hello named a kind outside its `kinds`.
    #[error("{principal} may not serve kind {}", Echo(.kind))]
    KindNotAllowed { principal: String, kind: String },
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
