//! The client's error type and the one-line rendering of a gRPC `Status`, including the
//! google.rpc error details (BadRequest, ErrorInfo) the Reins server attaches.

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Everything that can go wrong talking to a Reins server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not be reached (refused, unresolvable host, TLS, ...).
    #[error("cannot connect to the server")]
    Connect(#[source] tonic::transport::Error),
    /// A token, CA or client certificate that cannot be used; says why.
    #[error("bad credentials: {0}")]
    Credentials(String),
    /// The server address is not a valid URI; holds the address and why.
    #[error("invalid server URL {0}")]
    InvalidUrl(String),
    /// The server answered with an error.
    #[error("{}", describe_status(.0))]
    Rpc(#[from] Status),
}

/// One human-readable line for an RPC error: the canonical code name, the message and,
/// when the server attached them, the BadRequest field violations and the ErrorInfo reason.
///
/// `NOT_FOUND: task 0190… not found (reason TASK_NOT_FOUND)`
pub fn describe_status(status: &Status) -> String {
    let mut line = code_name(status.code()).to_owned();
    if !status.message().is_empty() {
        line.push_str(": ");
        line.push_str(status.message());
    }
    // Details that fail to decode are left out: the code and message still say what failed.
    let Ok(details) = status.check_error_details() else {
        return line;
    };
    if let Some(bad_request) = details.bad_request() {
        // Servers often spell the violations out in the message too; say each one once.
        let violations: Vec<String> = bad_request
            .field_violations
            .iter()
            .map(|violation| format!("{}: {}", violation.field, violation.description))
            .filter(|violation| !status.message().contains(violation.as_str()))
            .collect();
        if !violations.is_empty() {
            line.push_str(&format!(" [{}]", violations.join("; ")));
        }
    }
    if let Some(info) = details.error_info() {
        line.push_str(&format!(" (reason {})", info.reason));
    }
    line
}

/// The canonical gRPC name of a code, as in the gRPC spec and other languages' tooling
/// (tonic's `Display` gives a sentence instead).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::{ErrorDetails, FieldViolation};

    use super::*;

    #[test]
    fn plain_status_has_code_and_message() {
        let status = Status::not_found("task 42 not found");
        assert_eq!(describe_status(&status), "NOT_FOUND: task 42 not found");
    }

    #[test]
    fn empty_message_leaves_just_the_code() {
        assert_eq!(describe_status(&Status::unavailable("")), "UNAVAILABLE");
    }

    #[test]
    fn includes_error_info_reason() {
        let details = ErrorDetails::with_error_info("TASK_NOT_FOUND", "reins.dev", []);
        let status = Status::with_error_details(Code::NotFound, "task 42 not found", details);
        assert_eq!(
            describe_status(&status),
            "NOT_FOUND: task 42 not found (reason TASK_NOT_FOUND)"
        );
    }

    #[test]
    fn includes_field_violations_then_reason() {
        let mut details = ErrorDetails::with_bad_request(vec![
            FieldViolation::new("params.ms", "must be a non-negative integer"),
            FieldViolation::new("kind", "unknown kind `nap`"),
        ]);
        details.set_error_info("INVALID_PARAMS", "reins.dev", []);
        let status = Status::with_error_details(Code::InvalidArgument, "bad request", details);
        assert_eq!(
            describe_status(&status),
            "INVALID_ARGUMENT: bad request [params.ms: must be a non-negative integer; \
             kind: unknown kind `nap`] (reason INVALID_PARAMS)"
        );
    }

    #[test]
    fn violations_already_in_the_message_are_not_repeated() {
        let details = ErrorDetails::with_bad_request(vec![
            FieldViolation::new("task_id", "must be a UUID"),
            FieldViolation::new("reason", "too long"),
        ]);
        let status = Status::with_error_details(
            Code::InvalidArgument,
            "invalid request: task_id: must be a UUID",
            details,
        );
        assert_eq!(
            describe_status(&status),
            "INVALID_ARGUMENT: invalid request: task_id: must be a UUID [reason: too long]"
        );
    }

    #[test]
    fn rpc_error_displays_like_describe_status() {
        let status = Status::failed_precondition("task is not waiting for an answer");
        let expected = describe_status(&status);
        assert_eq!(Error::Rpc(status).to_string(), expected);
    }
}
