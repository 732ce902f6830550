//! Requests → domain values, with the shape checks that belong to the wire format: ids are
//! UUIDs, durations are non-negative, numbers are finite, page tokens are ours; and the
//! size limits of `crate::limits`. (Domain → proto, shared with the remote executor, is
//! `crate::convert`.)

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reins_proto::json::struct_to_json;
use reins_proto::v1 as pb;

use crate::convert::View;
use crate::error::{Echo, Error, FieldViolation, Result};
use crate::limits::Limits;
use crate::store::ActiveFilter;
use crate::task::{MAX_DURATION, NewTask, TaskId, Usage, budget};

/// The view a read asks for (`TaskView`); `default` when unspecified. Unknown values are
/// INVALID_ARGUMENT rather than silently FULL, so a typo does not cost a huge reply.
pub fn view(field: &str, raw: i32, default: View) -> Result<View> {
    match pb::TaskView::try_from(raw) {
        Ok(pb::TaskView::Unspecified) => Ok(default),
        Ok(pb::TaskView::Basic) => Ok(View::Basic),
        Ok(pb::TaskView::Full) => Ok(View::Full),
        Err(_) => Err(Error::invalid(
            field,
            format!("must be TASK_VIEW_BASIC or TASK_VIEW_FULL, got {raw}"),
        )),
    }
}

/// Default and largest `ListActive` page sizes.
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

pub fn task_id(field: &str, raw: &str) -> Result<TaskId> {
    if raw.is_empty() {
        return Err(Error::invalid(field, "required"));
    }
    TaskId::try_parse(raw).map_err(|_| {
        Error::invalid(
            field,
            format!("must be a task id (a UUID), got {}", Echo(raw)),
        )
    })
}

fn optional_task_id(field: &str, raw: &str) -> Result<Option<TaskId>> {
    if raw.is_empty() {
        Ok(None)
    } else {
        task_id(field, raw).map(Some)
    }
}

/// A protobuf duration that must be normalised (`|nanos|` below one second, with the sign of
/// `seconds`, as `google.protobuf.Duration` requires), non-negative and within the
/// protobuf range (10,000 years); `None` if unset.
pub fn duration(field: &str, value: Option<prost_types::Duration>) -> Result<Option<Duration>> {
    let Some(value) = value else { return Ok(None) };
    let mixed_signs =
        (value.seconds > 0 && value.nanos < 0) || (value.seconds < 0 && value.nanos > 0);
    if value.nanos.unsigned_abs() >= 1_000_000_000 || mixed_signs {
        return Err(Error::invalid(
            field,
            "must be a normalised Duration: |nanos| below 1,000,000,000 and of the same sign as seconds",
        ));
    }
    match Duration::try_from(value) {
        Ok(duration) if duration <= MAX_DURATION => Ok(Some(duration)),
        Ok(_) => Err(Error::invalid(
            field,
            "must be at most 10,000 years (the protobuf Duration range)",
        )),
        Err(_) => Err(Error::invalid(field, "must be a non-negative duration")),
    }
}

pub fn new_task(request: pb::StartTaskRequest, limits: &Limits) -> Result<NewTask> {
    let mut violations = Vec::new();
    if request.kind.is_empty() {
        violations.push(FieldViolation::new("kind", "required"));
    }
    let params = request
        .params
        .as_ref()
        .map(struct_to_json)
        .transpose()
        .unwrap_or_else(|err| {
            violations.push(FieldViolation::new("params", err.to_string()));
            None
        });
    let parent_id = collect(
        &mut violations,
        optional_task_id("parent_id", &request.parent_id),
    )
    .flatten();
    let timeout = collect(&mut violations, duration("timeout", request.timeout)).flatten();
    if timeout == Some(Duration::ZERO) {
        violations.push(FieldViolation::new(
            "timeout",
            "must be positive; leave unset for no timeout",
        ));
    }
    collect(&mut violations, labels("labels", &request.labels));
    let budget: Usage = request.budget.into_iter().collect();
    violations.extend(
        budget::budget_problems(&budget)
            .into_iter()
            .map(|(dimension, why)| match dimension {
                Some(dimension) => {
                    FieldViolation::new("budget", format!("{}: {why}", Echo(&dimension)))
                }
                None => FieldViolation::new("budget", why),
            }),
    );
    let spec = NewTask {
        kind: request.kind,
        description: request.description,
        params: params.unwrap_or_default(),
        parent_id,
        detached: request.detached,
        session_id: request.session_id,
        labels: request.labels.into_iter().collect(),
        timeout,
        request_id: request.request_id,
        max_attempts: request.max_attempts.max(1),
        trace_context: Default::default(),
        budget,
        // The engine sets the tenant and creator from the caller, the ancestors from the
        // parent.
        ..NewTask::default()
    };
    violations.extend(limits.new_task(&spec));
    if !violations.is_empty() {
        return Err(Error::InvalidArgument(violations));
    }
    Ok(spec)
}

/// Names the fields of a message nested in the request's field `parent` (`task.kind`).
pub fn nested(parent: &'static str) -> impl Fn(Error) -> Error {
    move |err| match err {
        Error::InvalidArgument(violations) => Error::InvalidArgument(
            violations
                .into_iter()
                .map(|v| FieldViolation::new(format!("{parent}.{}", v.field), v.description))
                .collect(),
        ),
        other => other,
    }
}

/// Moves the field violations of `result` into `violations`, so that one reply names every
/// bad field.
fn collect<T>(violations: &mut Vec<FieldViolation>, result: Result<T>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(Error::InvalidArgument(mut found)) => {
            violations.append(&mut found);
            None
        }
        Err(other) => {
            violations.push(FieldViolation::new("request", other.to_string()));
            None
        }
    }
}

fn labels(field: &str, labels: &std::collections::HashMap<String, String>) -> Result<()> {
    let violations: Vec<FieldViolation> = labels
        .keys()
        .filter(|key| key.is_empty())
        .map(|_| FieldViolation::new(field, "label keys must not be empty"))
        .collect();
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

/// A `ListActive` request as a filter (within `tenant`; `None`: every tenant), a start
/// position and a page size.
pub fn list_query(
    request: &pb::ListActiveRequest,
    tenant: Option<String>,
) -> Result<(ActiveFilter, Option<TaskId>, usize)> {
    let mut violations = Vec::new();
    let page_size = match request.page_size {
        0 => DEFAULT_PAGE_SIZE,
        n if n < 0 => {
            violations.push(FieldViolation::new("page_size", "must not be negative"));
            0
        }
        // Larger requests are served at the maximum, as the page token lets them go on.
        n => (n as usize).min(MAX_PAGE_SIZE),
    };
    collect(&mut violations, labels("labels", &request.labels));
    let parent_id = collect(
        &mut violations,
        optional_task_id("parent_id", &request.parent_id),
    )
    .flatten();
    let filter = ActiveFilter {
        tenant,
        kind: non_empty(&request.kind),
        session_id: non_empty(&request.session_id),
        parent_id,
        labels: request.labels.clone().into_iter().collect(),
    };
    let after = collect(
        &mut violations,
        decode_page_token(&request.page_token, &filter),
    )
    .flatten();
    if !violations.is_empty() {
        return Err(Error::InvalidArgument(violations));
    }
    Ok((filter, after, page_size))
}

/// What a CancelTasks request asks for.
pub struct BulkCancelQuery {
    pub filter: ActiveFilter,
    /// A soft cancel's grace is `None` when the request leaves it to the server.
    pub mode: pb::CancelMode,
    pub grace: Option<Duration>,
    pub dry_run: bool,
}

/// A CancelTasks request: at least one filter; a known mode (unspecified: soft); a grace
/// period only for soft cancels.
pub fn bulk_cancel(
    request: &pb::CancelTasksRequest,
    tenant: Option<String>,
) -> Result<BulkCancelQuery> {
    let mut violations = Vec::new();
    collect(&mut violations, labels("labels", &request.labels));
    let parent_id = collect(
        &mut violations,
        optional_task_id("parent_id", &request.parent_id),
    )
    .flatten();
    let filter = ActiveFilter {
        tenant,
        kind: non_empty(&request.kind),
        session_id: non_empty(&request.session_id),
        parent_id,
        labels: request.labels.clone().into_iter().collect(),
    };
    let unfiltered = ActiveFilter {
        tenant: filter.tenant.clone(),
        ..ActiveFilter::default()
    };
    if filter == unfiltered && request.parent_id.is_empty() {
        violations.push(FieldViolation::new(
            "kind",
            "at least one filter is required (kind, session_id, parent_id or labels); to cancel everything, cancel by kind",
        ));
    }
    let mode = match pb::CancelMode::try_from(request.mode) {
        Ok(pb::CancelMode::Unspecified) => pb::CancelMode::Soft,
        Ok(mode) => mode,
        Err(_) => {
            violations.push(FieldViolation::new(
                "mode",
                format!(
                    "must be CANCEL_MODE_SOFT or CANCEL_MODE_HARD, got {}",
                    request.mode
                ),
            ));
            pb::CancelMode::Soft
        }
    };
    let grace = collect(
        &mut violations,
        duration("grace_period", request.grace_period),
    )
    .flatten();
    if grace.is_some() && mode == pb::CancelMode::Hard {
        violations.push(FieldViolation::new(
            "grace_period",
            "a hard cancel has no grace period",
        ));
    }
    if !violations.is_empty() {
        return Err(Error::InvalidArgument(violations));
    }
    Ok(BulkCancelQuery {
        filter,
        mode,
        grace,
        dry_run: request.dry_run,
    })
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

/// Page tokens are opaque to clients: a versioned, base64url-encoded position (the last
/// task id of the previous page) and the digest of the tenant and filter it was issued
/// for, so a token reused with another filter or by another tenant is refused rather than
/// quietly continuing a different listing. Keyset positions stay valid while tasks come
/// and go.
const PAGE_TOKEN_PREFIX: &str = "v2:";

/// The first 8 bytes of the SHA-256 of the tenant and the filter's fields, in hex.
fn filter_digest(filter: &ActiveFilter) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    let mut field = |text: &str| {
        hash.update((text.len() as u64).to_le_bytes());
        hash.update(text.as_bytes());
    };
    field(filter.tenant.as_deref().unwrap_or("*"));
    field(filter.kind.as_deref().unwrap_or_default());
    field(filter.session_id.as_deref().unwrap_or_default());
    field(
        &filter
            .parent_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
    );
    for (key, value) in &filter.labels {
        field(key);
        field(value);
    }
    hex::encode(&hash.finalize()[..8])
}

pub fn encode_page_token(after: TaskId, filter: &ActiveFilter) -> String {
    let digest = filter_digest(filter);
    URL_SAFE_NO_PAD.encode(format!("{PAGE_TOKEN_PREFIX}{after}:{digest}"))
}

pub fn decode_page_token(token: &str, filter: &ActiveFilter) -> Result<Option<TaskId>> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Error::invalid("page_token", "not a page token returned by ListActive");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let rest = text.strip_prefix(PAGE_TOKEN_PREFIX).ok_or_else(invalid)?;
    let (id, digest) = rest.split_once(':').ok_or_else(invalid)?;
    let id = TaskId::try_parse(id).map_err(|_| invalid())?;
    if digest != filter_digest(filter) {
        return Err(Error::invalid(
            "page_token",
            "the page token was issued for another filter or tenant: list again from the first page",
        ));
    }
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn fields(err: Error) -> Vec<String> {
        match err {
            Error::InvalidArgument(v) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected INVALID_ARGUMENT, got {other}"),
        }
    }

    #[test]
    fn a_start_request_reports_every_bad_field_at_once() {
        let request = pb::StartTaskRequest {
            kind: String::new(),
            parent_id: "not-a-uuid".into(),
            timeout: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            labels: [(String::new(), "v".to_owned())].into(),
            ..Default::default()
        };
        let limits = Limits {
            max_description_bytes: 1,
            ..crate::limits::tests::defaults()
        };
        let request = pb::StartTaskRequest {
            description: "too long".into(),
            ..request
        };
        assert_eq!(
            fields(new_task(request, &limits).unwrap_err()),
            ["kind", "parent_id", "timeout", "labels", "description"]
        );
    }

    #[test]
    fn durations_must_be_normalised() {
        let at =
            |seconds, nanos| duration("timeout", Some(prost_types::Duration { seconds, nanos }));
        assert_eq!(
            at(1, 500_000_000).unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            at(0, 999_999_999).unwrap(),
            Some(Duration::from_nanos(999_999_999))
        );
        assert_eq!(fields(at(0, 1_500_000_000).unwrap_err()), ["timeout"]);
        assert_eq!(fields(at(1, -5).unwrap_err()), ["timeout"]);
        assert_eq!(fields(at(-1, 5).unwrap_err()), ["timeout"]);
        assert_eq!(fields(at(0, -1_000_000_000).unwrap_err()), ["timeout"]);
    }

    #[test]
    fn a_long_bad_id_is_echoed_only_in_part() {
        let long = "x".repeat(20_000);
        let Error::InvalidArgument(violations) = task_id("task_id", &long).unwrap_err() else {
            panic!("expected INVALID_ARGUMENT");
        };
        assert!(
            violations[0].description.len() < 200,
            "{}",
            violations[0].description
        );
    }

    #[test]
    fn durations_must_fit_the_protobuf_range() {
        let at = |seconds| duration("timeout", Some(prost_types::Duration { seconds, nanos: 0 }));
        assert_eq!(at(315_576_000_000).unwrap(), Some(MAX_DURATION));
        assert_eq!(fields(at(315_576_000_001).unwrap_err()), ["timeout"]);
        assert_eq!(fields(at(i64::MAX).unwrap_err()), ["timeout"]);
        assert_eq!(fields(at(-1).unwrap_err()), ["timeout"]);
    }

    #[test]
    fn a_list_request_reports_every_bad_field_at_once() {
        let request = pb::ListActiveRequest {
            page_size: -1,
            parent_id: "x".into(),
            page_token: "???".into(),
            ..Default::default()
        };
        assert_eq!(
            fields(list_query(&request, None).unwrap_err()),
            ["page_size", "parent_id", "page_token"]
        );
    }

    #[test]
    fn task_ids_must_be_uuids() {
        assert_eq!(fields(task_id("task_id", "").unwrap_err()), ["task_id"]);
        assert_eq!(fields(task_id("task_id", "123").unwrap_err()), ["task_id"]);
        let id = TaskId::now_v7();
        assert_eq!(task_id("task_id", &id.to_string()).unwrap(), id);
    }

    #[test]
    fn page_sizes_default_clamp_and_refuse_negatives() {
        let size = |page_size| {
            list_query(
                &pb::ListActiveRequest {
                    page_size,
                    ..Default::default()
                },
                None,
            )
            .map(|q| q.2)
        };
        assert_eq!(size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(size(5).unwrap(), 5);
        assert_eq!(size(5000).unwrap(), MAX_PAGE_SIZE);
        assert_eq!(fields(size(-1).unwrap_err()), ["page_size"]);
    }

    #[test]
    fn foreign_page_tokens_are_refused() {
        for token in ["???", "aGVsbG8", &URL_SAFE_NO_PAD.encode("v1:nope")] {
            assert_eq!(
                fields(decode_page_token(token, &ActiveFilter::default()).unwrap_err()),
                ["page_token"],
                "{token}"
            );
        }
    }

    #[test]
    fn a_page_token_is_refused_with_another_filter_or_tenant() {
        let id = TaskId::now_v7();
        let mine = ActiveFilter {
            tenant: Some("acme".into()),
            kind: Some("sleep".into()),
            ..ActiveFilter::default()
        };
        let token = encode_page_token(id, &mine);
        assert_eq!(decode_page_token(&token, &mine).unwrap(), Some(id));
        let other_tenant = ActiveFilter {
            tenant: Some("globex".into()),
            ..mine.clone()
        };
        let other_kind = ActiveFilter {
            kind: Some("exec".into()),
            ..mine.clone()
        };
        let every_tenant = ActiveFilter {
            tenant: None,
            ..mine.clone()
        };
        for filter in [other_tenant, other_kind, every_tenant] {
            assert_eq!(
                fields(decode_page_token(&token, &filter).unwrap_err()),
                ["page_token"]
            );
        }
    }

    proptest! {
        #[test]
        fn page_tokens_round_trip(bytes in any::<[u8; 16]>()) {
            let id = TaskId::from_bytes(bytes);
            let filter = ActiveFilter::default();
            prop_assert_eq!(
                decode_page_token(&encode_page_token(id, &filter), &filter).unwrap(),
                Some(id)
            );
        }
    }
}
