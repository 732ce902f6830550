//! Human-readable text for tasks, cancel outcomes, list rows and watch lines.

use std::time::SystemTime;

use reins_client::{
    duration, json,
    proto::{CancelInfo, CancelMode, CancelOutcome, CancelResponse, Task, TaskState},
};

/// The state without its `TASK_STATE_` prefix, e.g. `RUNNING`; values this client does not
/// know (a newer server) show as `UNKNOWN(<number>)`.
pub fn state_name(raw: i32) -> String {
    match TaskState::try_from(raw) {
        Ok(state) => state
            .as_str_name()
            .trim_start_matches("TASK_STATE_")
            .to_owned(),
        Err(_) => format!("UNKNOWN({raw})"),
    }
}

/// A multi-line summary: identity and state first, then only the fields that are set.
pub fn task_summary(task: &Task) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("task", task.id.clone()),
        ("kind", task.kind.clone()),
        (
            "state",
            format!(
                "{} (version {}, attempt {})",
                state_name(task.state),
                task.version,
                task.attempt
            ),
        ),
        (
            "owner",
            if task.owner.is_empty() {
                "none yet".to_owned()
            } else {
                task.owner.clone()
            },
        ),
    ];
    let mut optional = |label, value: String| {
        if !value.is_empty() {
            rows.push((label, value));
        }
    };
    optional("description", task.description.clone());
    optional("progress", progress_text(task));
    optional("parent", parent_text(task));
    optional("session", task.session_id.clone());
    optional("labels", labels_text(task));
    optional(
        "timeout",
        task.timeout
            .as_ref()
            .and_then(duration::from_proto)
            .map(|timeout| humantime::format_duration(timeout).to_string())
            .unwrap_or_default(),
    );
    optional("question", task.question.clone());
    optional("answer", task.answer.clone());
    optional("checkpoints", checkpoints_text(task));
    optional(
        "result",
        task.result.as_ref().map(show_value).unwrap_or_default(),
    );
    optional("error", task.error.clone());
    optional(
        "cancel",
        task.cancel.as_ref().map(cancel_text).unwrap_or_default(),
    );
    optional(
        "created",
        task.created_at
            .as_ref()
            .map(timestamp_text)
            .unwrap_or_default(),
    );
    optional(
        "started",
        task.started_at
            .as_ref()
            .map(timestamp_text)
            .unwrap_or_default(),
    );
    optional(
        "finished",
        task.finished_at
            .as_ref()
            .map(timestamp_text)
            .unwrap_or_default(),
    );

    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0) + 2;
    rows.iter()
        .map(|(label, value)| format!("{:<width$}{value}", format!("{label}:")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The outcome of a cancel in words, followed by the task as it is after the cancel.
pub fn cancel_summary(response: &CancelResponse) -> String {
    let outcome = match CancelOutcome::try_from(response.outcome) {
        Ok(CancelOutcome::Cancelled) => "cancelled".to_owned(),
        Ok(CancelOutcome::Requested) => {
            "cancel requested: the task stops at its next checkpoint".to_owned()
        }
        Ok(CancelOutcome::AlreadyCancelled) => "already cancelled, nothing changed".to_owned(),
        Ok(CancelOutcome::AlreadyFinished) => "already finished, nothing changed".to_owned(),
        Ok(CancelOutcome::Unspecified) | Err(_) => format!("outcome {}", response.outcome),
    };
    match &response.task {
        Some(task) => format!("{outcome}\n{}", task_summary(task)),
        None => outcome,
    }
}

/// One row of `reins list`: id, state, kind, percentage, description.
pub fn task_row(task: &Task) -> String {
    let percent = task
        .progress
        .as_ref()
        .map(|progress| format!("{:.0}%", progress.fraction * 100.0))
        .unwrap_or_else(|| "-".to_owned());
    format!(
        "{}  {:<18}  {:<10}  {:>4}  {}",
        task.id,
        state_name(task.state),
        task.kind,
        percent,
        task.description
    )
    .trim_end()
    .to_owned()
}

/// One line per watch event for scripts: `<version> <STATE> <fraction> <message>`.
pub fn watch_line(task: &Task) -> String {
    let (fraction, message) = task
        .progress
        .as_ref()
        .map_or((0.0, ""), |progress| (progress.fraction, &progress.message));
    format!(
        "{} {} {fraction:.2} {message}",
        task.version,
        state_name(task.state)
    )
    .trim_end()
    .to_owned()
}

fn progress_text(task: &Task) -> String {
    let Some(progress) = &task.progress else {
        return String::new();
    };
    format!("{:.0}% {}", progress.fraction * 100.0, progress.message)
        .trim_end()
        .to_owned()
}

fn parent_text(task: &Task) -> String {
    match (task.parent_id.is_empty(), task.detached) {
        (true, _) => String::new(),
        (false, false) => task.parent_id.clone(),
        (false, true) => format!("{} (detached)", task.parent_id),
    }
}

fn labels_text(task: &Task) -> String {
    // HashMap order changes from run to run; sorted output can be compared and diffed.
    let mut labels: Vec<String> = task
        .labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    labels.sort();
    labels.join(", ")
}

fn checkpoints_text(task: &Task) -> String {
    let kept = match task.partial_results.last() {
        None => String::new(),
        Some(last) => format!(
            "{} (last: {})",
            task.partial_results.len(),
            show_value(last)
        ),
    };
    match task.partial_results_dropped {
        0 => kept,
        dropped if kept.is_empty() => format!("{dropped} dropped"),
        dropped => format!("{kept}, {dropped} older dropped"),
    }
}

fn cancel_text(cancel: &CancelInfo) -> String {
    let mode = match CancelMode::try_from(cancel.mode) {
        Ok(CancelMode::Soft) => "soft",
        Ok(CancelMode::Hard) => "hard",
        Ok(CancelMode::Unspecified) | Err(_) => "unspecified",
    };
    let mut requested = format!("{mode} cancel requested");
    if let Some(requested_at) = &cancel.requested_at {
        requested.push_str(&format!(" at {}", timestamp_text(requested_at)));
    }
    let mut parts = vec![requested];
    if !cancel.reason.is_empty() {
        parts.push(format!("reason {:?}", cancel.reason));
    }
    if let Some(deadline) = &cancel.grace_deadline {
        parts.push(format!("grace until {}", timestamp_text(deadline)));
    }
    if cancel.escalated {
        parts.push("escalated to hard after the grace period".to_owned());
    }
    if cancel.deadline_exceeded {
        parts.push("started by the task's timeout".to_owned());
    }
    parts.join("; ")
}

/// RFC 3339 in UTC with millisecond precision; timestamps before 1970 or beyond
/// `SystemTime` fall back to protobuf's own rendering.
fn timestamp_text(timestamp: &prost_types::Timestamp) -> String {
    match SystemTime::try_from(*timestamp) {
        Ok(time) if time >= SystemTime::UNIX_EPOCH => {
            humantime::format_rfc3339_millis(time).to_string()
        }
        _ => timestamp.to_string(),
    }
}

/// A value as compact JSON (the server never sends the non-finite numbers JSON lacks).
fn show_value(value: &prost_types::Value) -> String {
    json::value_to_json(value).map_or_else(|err| format!("<{err}>"), |json| json.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use reins_client::proto::Progress;
    use serde_json::json;

    use super::*;

    fn running_task() -> Task {
        Task {
            id: "0190aaaa".into(),
            kind: "sleep".into(),
            state: TaskState::Running.into(),
            owner: "replica-1".into(),
            version: 3,
            attempt: 1,
            progress: Some(Progress {
                fraction: 0.425,
                message: "step 2 of 5".into(),
            }),
            ..Task::default()
        }
    }

    #[test]
    fn summary_of_a_running_task() {
        assert_eq!(
            task_summary(&running_task()),
            "task:     0190aaaa\n\
             kind:     sleep\n\
             state:    RUNNING (version 3, attempt 1)\n\
             owner:    replica-1\n\
             progress: 42% step 2 of 5"
        );
    }

    #[test]
    fn summary_of_a_pending_task_has_no_owner_yet() {
        let task = Task {
            state: TaskState::Pending.into(),
            owner: String::new(),
            progress: None,
            ..running_task()
        };
        let summary = task_summary(&task);
        assert!(
            summary.lines().any(|line| line == "owner: none yet"),
            "{summary}"
        );
    }

    #[test]
    fn summary_shows_the_fields_that_are_set() {
        let task = Task {
            state: TaskState::Cancelled.into(),
            description: "nap".into(),
            parent_id: "0190pppp".into(),
            detached: true,
            labels: HashMap::from([("tier".into(), "2".into()), ("team".into(), "infra".into())]),
            timeout: Some(prost_types::Duration {
                seconds: 90,
                nanos: 0,
            }),
            question: "continue?".into(),
            partial_results: vec![
                json::json_to_value(&json!(1)),
                json::json_to_value(&json!({"done": 2})),
            ],
            result: Some(json::json_to_value(&json!({"slept_ms": 200}))),
            error: "boom".into(),
            cancel: Some(CancelInfo {
                mode: CancelMode::Soft.into(),
                reason: "user asked".into(),
                requested_at: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 5_000_000,
                }),
                grace_deadline: Some(prost_types::Timestamp {
                    seconds: 1_700_000_010,
                    nanos: 0,
                }),
                escalated: true,
                deadline_exceeded: false,
                requested_by: String::new(),
            }),
            ..running_task()
        };
        let summary = task_summary(&task);
        for expected in [
            "state:       CANCELLED (version 3, attempt 1)",
            "description: nap",
            "parent:      0190pppp (detached)",
            "labels:      team=infra, tier=2",
            "timeout:     1m 30s",
            "question:    continue?",
            r#"checkpoints: 2 (last: {"done":2})"#,
            r#"result:      {"slept_ms":200}"#,
            "error:       boom",
            "cancel:      soft cancel requested at 2023-11-14T22:13:20.005Z; \
             reason \"user asked\"; grace until 2023-11-14T22:13:30.000Z; \
             escalated to hard after the grace period",
        ] {
            assert!(
                summary.lines().any(|line| line == expected),
                "missing line {expected:?} in:\n{summary}"
            );
        }
    }

    #[test]
    fn unknown_state_shows_its_number() {
        assert_eq!(state_name(42), "UNKNOWN(42)");
        assert_eq!(
            state_name(TaskState::WaitingForAnswer.into()),
            "WAITING_FOR_ANSWER"
        );
    }

    #[test]
    fn cancel_summary_starts_with_the_outcome() {
        let response = CancelResponse {
            task: Some(running_task()),
            outcome: CancelOutcome::Requested.into(),
        };
        let summary = cancel_summary(&response);
        assert!(
            summary.starts_with("cancel requested: the task stops at its next checkpoint\ntask:"),
            "{summary}"
        );
    }

    #[test]
    fn list_row_and_watch_line() {
        let task = Task {
            description: "nap".into(),
            ..running_task()
        };
        assert_eq!(
            task_row(&task),
            "0190aaaa  RUNNING             sleep        42%  nap"
        );
        assert_eq!(watch_line(&task), "3 RUNNING 0.42 step 2 of 5");
    }

    #[test]
    fn watch_line_without_progress() {
        let task = Task {
            progress: None,
            state: TaskState::Pending.into(),
            ..running_task()
        };
        assert_eq!(watch_line(&task), "3 PENDING 0.00");
    }
}
