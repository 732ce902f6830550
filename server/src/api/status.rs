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
        Error::ExecNotAllowed(_) => (Code::PermissionDenied, "EXEC_NOT_ALLOWED"),
        Error::TaskNotFound(_) => (Code::NotFound, "TASK_NOT_FOUND"),
        Error::ParentNotFound(_) => (Code::NotFound, "PARENT_NOT_FOUND"),
        Error::ParentFinished(_) => (Code::FailedPrecondition, "PARENT_FINISHED"),
        Error::TaskNotWaiting { .. } => (Code::FailedPrecondition, "TASK_NOT_WAITING"),
        Error::RequestIdConflict { .. } => (Code::AlreadyExists, "REQUEST_ID_CONFLICT"),
        Error::HistoryUnavailable { .. } => (Code::OutOfRange, "HISTORY_UNAVAILABLE"),
        Error::WorkerProtocol(_) => (Code::FailedPrecondition, "WORKER_PROTOCOL"),
        Error::ShuttingDown => (Code::Unavailable, "SHUTTING_DOWN"),
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
        _ => {}
    }
    Status::with_error_details(code, err.to_string(), details)
}

/// tonic refuses an oversize message with OUT_OF_RANGE; gRPC's convention (and our
/// contract) is RESOURCE_EXHAUSTED. A response layer rewrites that one status.
pub(crate) fn resource_exhausted_for_oversize(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let out_of_range = headers.get("grpc-status").is_some_and(|code| code == "11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|message| message.to_str().ok())
        .is_some_and(|message| {
            message
                .replace("%20", " ")
                .contains("message length too large")
        });
    if out_of_range && too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
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
