//! Domain errors → gRPC statuses, in one place. Every status carries a google.rpc
//! `ErrorInfo` whose `reason` clients can branch on; field errors also carry a
//! `BadRequest` with one violation per bad field.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;
use crate::store::StoreError;

/// The `ErrorInfo.domain` of every Reins error.
pub const ERROR_DOMAIN: &str = "reins.v1";

fn code_and_reason(err: &Error) -> (Code, &'static str) {
    match err {
        Error::InvalidArgument(_) => (Code::InvalidArgument, "INVALID_ARGUMENT"),
        Error::KindUnknown(_) => (Code::InvalidArgument, "KIND_UNKNOWN"),
        // Well-formed, refused by the operator's policy (as EXEC_NOT_ALLOWED): not the
        // worker's mistake to fix by changing its message.
        Error::KindNotDeclared(_) => (Code::PermissionDenied, "KIND_NOT_DECLARED"),
        Error::ExecNotAllowed(_) => (Code::PermissionDenied, "EXEC_NOT_ALLOWED"),
        Error::TaskNotFound(_) => (Code::NotFound, "TASK_NOT_FOUND"),
        Error::ParentNotFound(_) => (Code::NotFound, "PARENT_NOT_FOUND"),
        Error::ParentFinished(_) => (Code::FailedPrecondition, "PARENT_FINISHED"),
        Error::TaskNotWaiting { .. } => (Code::FailedPrecondition, "TASK_NOT_WAITING"),
        Error::SessionCancelled(_) => (Code::FailedPrecondition, "SESSION_CANCELLED"),
        Error::TreeTooDeep { .. } => (Code::FailedPrecondition, "TREE_TOO_DEEP"),
        Error::BudgetExhausted { .. } => (Code::FailedPrecondition, "BUDGET_EXHAUSTED"),
        Error::RequestIdConflict { .. } => (Code::AlreadyExists, "REQUEST_ID_CONFLICT"),
        Error::HistoryUnavailable { .. } => (Code::OutOfRange, "HISTORY_UNAVAILABLE"),
        Error::VersionAhead { .. } => (Code::OutOfRange, "VERSION_AHEAD"),
        Error::Undecodable(_) => (Code::InvalidArgument, "MALFORMED_REQUEST"),
        Error::MessageTooLarge(_) => (Code::ResourceExhausted, "MESSAGE_TOO_LARGE"),
        Error::WorkerProtocol(_) => (Code::FailedPrecondition, "WORKER_PROTOCOL"),
        Error::ShuttingDown => (Code::Unavailable, "SHUTTING_DOWN"),
        Error::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED"),
        Error::RoleRequired { .. } => (Code::PermissionDenied, "ROLE_REQUIRED"),
        Error::KindNotAllowed { .. } => (Code::PermissionDenied, "KIND_NOT_ALLOWED"),
        Error::QuotaExceeded { .. } => (Code::ResourceExhausted, "QUOTA_EXCEEDED"),
        Error::Store(StoreError::Unavailable(_)) => (Code::Unavailable, "STORE_UNAVAILABLE"),
        // Retrying cannot fix a record that does not decode: not a retryable code.
        Error::Store(StoreError::Corrupt(_)) => (Code::DataLoss, "RECORD_CORRUPT"),
    }
}

fn to_status(err: Error) -> Status {
    let (code, reason) = code_and_reason(&err);
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, []);
    match &err {
        Error::InvalidArgument(violations) => {
            for violation in violations {
                details.add_bad_request_violation(
                    violation.field.clone(),
                    violation.description.clone(),
                );
            }
        }
        Error::KindUnknown(_) => {
            details.add_bad_request_violation("kind", err.to_string());
        }
        Error::Undecodable(description) => {
            details.add_bad_request_violation("request", description.clone());
        }
        Error::QuotaExceeded {
            tenant,
            quota,
            retry_after,
            ..
        } => {
            details
                .add_quota_failure_violation(format!("tenant:{tenant}"), format!("{quota}: {err}"));
            // Only when it is known (a start rate); a cap frees when a task ends.
            if retry_after.is_some() {
                details.set_retry_info(*retry_after);
            }
        }
        _ => {}
    }
    Status::with_error_details(code, err.to_string(), details)
}

/// tonic answers two client mistakes itself, with codes our contract does not use: a
/// request that does not decode (garbage bytes, invalid UTF-8, nesting beyond the decoder's
/// limit) is INTERNAL, and an oversize message OUT_OF_RANGE. Every such answer carries its
/// `Status` in the response extensions; a response layer replaces it with ours
/// (INVALID_ARGUMENT `MALFORMED_REQUEST` with a `BadRequest`, RESOURCE_EXHAUSTED
/// `MESSAGE_TOO_LARGE`), so clients see the right code and can branch on the reason.
pub(crate) fn client_mistakes(
    response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let Some(status) = response.extensions().get::<Status>() else {
        return response;
    };
    let message = status.message();
    let ours = match status.code() {
        Code::Internal if message.starts_with("failed to decode Protobuf message") => {
            Error::Undecodable(message.to_owned())
        }
        Code::OutOfRange if message.contains("message length too large") => {
            Error::MessageTooLarge(message.to_owned())
        }
        _ => return response,
    };
    to_status(ours).into_http()
}

/// A status from a client-streaming call's inbound stream: a message that does not decode
/// is the client's mistake, not ours.
pub(crate) fn inbound(status: Status) -> Status {
    if status.code() == Code::Internal
        && status
            .message()
            .starts_with("failed to decode Protobuf message")
    {
        return to_status(Error::Undecodable(status.message().to_owned()));
    }
    status
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        to_status(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FieldViolation;
    use crate::task::TaskId;

    #[test]
    fn field_errors_carry_bad_request_and_error_info() {
        let status = to_status(Error::InvalidArgument(vec![FieldViolation::new(
            "task_id", "required",
        )]));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let violations = &details.bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, "task_id");
        assert_eq!(details.error_info().unwrap().reason, "INVALID_ARGUMENT");
    }

    #[test]
    fn each_error_has_its_code_and_reason() {
        let id = TaskId::now_v7();
        let status = to_status(Error::TaskNotFound(id));
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().contains(&id.to_string()));
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "TASK_NOT_FOUND"
        );

        let corrupt = serde_json::from_str::<u8>("{").unwrap_err();
        let status = to_status(Error::Store(StoreError::Corrupt(corrupt)));
        assert_eq!(
            status.code(),
            Code::DataLoss,
            "corrupt data is not retryable"
        );
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "RECORD_CORRUPT"
        );

        let status = to_status(Error::KindUnknown("nope".into()));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status
                .get_error_details()
                .bad_request()
                .unwrap()
                .field_violations[0]
                .field,
            "kind"
        );
    }
}
