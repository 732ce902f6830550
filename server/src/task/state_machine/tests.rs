use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::task::{NewTask, TaskId};

const OWNER: &str = "replica-a";

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn fence() -> Fence {
    Fence {
        owner: OWNER.to_owned(),
        attempt: 1,
    }
}

fn report(report: Report) -> Event {
    Event::Report {
        fence: fence(),
        report,
    }
}

fn pending() -> Task {
    Task::new(TaskId::now_v7(), NewTask::default(), t(0))
}

fn running() -> Task {
    apply(
        &pending(),
        &Event::Start {
            owner: OWNER.into(),
            worker: String::new(),
        },
        t(1),
    )
    .unwrap()
    .unwrap()
}

fn waiting() -> Task {
    apply(
        &running(),
        &report(Report::Ask {
            question: "why?".into(),
            timeout: None,
        }),
        t(2),
    )
    .unwrap()
    .unwrap()
}

fn task_in(state: TaskState) -> Task {
    match state {
        TaskState::Pending => pending(),
        TaskState::Running => running(),
        TaskState::WaitingForAnswer => waiting(),
        TaskState::Completed => apply(
            &running(),
            &report(Report::Complete { result: json!(1) }),
            t(3),
        )
        .unwrap()
        .unwrap(),
        TaskState::Failed => apply(
            &running(),
            &report(Report::Fail {
                error: "boom".into(),
                result: None,
            }),
            t(3),
        )
        .unwrap()
        .unwrap(),
        TaskState::Cancelled => apply(
            &running(),
            &Event::HardCancel {
                reason: "stop".into(),
            },
            t(3),
        )
        .unwrap()
        .unwrap(),
    }
}

/// One event of each kind, named for the matrix.
fn every_event() -> Vec<(&'static str, Event)> {
    vec![
        (
            "start",
            Event::Start {
                owner: OWNER.into(),
                worker: String::new(),
            },
        ),
        (
            "progress",
            report(Report::Progress {
                fraction: 0.5,
                message: "half".into(),
                partial_result: Some(json!("p")),
                usage: Usage::new(),
            }),
        ),
        (
            "ask",
            report(Report::Ask {
                question: "q".into(),
                timeout: None,
            }),
        ),
        ("complete", report(Report::Complete { result: json!("r") })),
        (
            "fail",
            report(Report::Fail {
                error: "e".into(),
                result: None,
            }),
        ),
        ("stopped", report(Report::Stopped { result: json!("s") })),
        ("answer", Event::Answer { answer: "a".into() }),
        (
            "soft_cancel",
            Event::SoftCancel {
                reason: "r".into(),
                grace: secs(100),
            },
        ),
        ("hard_cancel", Event::HardCancel { reason: "r".into() }),
        ("escalate", Event::Escalate),
        ("time_out", Event::TimeOut { grace: secs(100) }),
        (
            "budget_exhausted",
            Event::BudgetExhausted {
                exhausted: Exhausted {
                    dimension: "steps".into(),
                    used: 3.0,
                    limit: 3.0,
                },
                grace: secs(100),
            },
        ),
        ("answer_time_out", Event::AnswerTimeOut),
        (
            "owner_lost",
            Event::OwnerLost {
                owner: OWNER.into(),
            },
        ),
        ("adopt", adopt(1)),
    ]
}

/// Worker connection ids, oldest first (UUIDv7s compare in time order).
const FIRST_CONNECTION: &str = "w/0190a000-0000-7000-8000-000000000001";
const SECOND_CONNECTION: &str = "w/0190a000-0000-7000-8000-000000000002";

/// Replica b adopts `attempt` of a task for the second worker connection.
fn adopt(attempt: u32) -> Event {
    Event::Adopt {
        owner: "replica-b".into(),
        worker: SECOND_CONNECTION.into(),
        attempt,
    }
}

type Expected = Result<TaskState, Rejection>;

fn expected(state: TaskState, event: &str) -> Expected {
    use Rejection::*;
    use TaskState::*;
    if state.is_terminal() {
        return Err(Terminal(state));
    }
    match (state, event) {
        (Pending, "start") => Ok(Running),
        (Pending, "answer") => Err(NotWaiting),
        (Pending, "soft_cancel" | "hard_cancel" | "budget_exhausted") => Ok(Cancelled),
        (Pending | Running, "answer_time_out") => Err(NotWaiting),
        // The waiting task's question has no deadline.
        (WaitingForAnswer, "answer_time_out") => Err(NotDue),
        (Pending, "escalate" | "time_out") => Err(NotDue),
        (Pending, "owner_lost" | "adopt") => Err(NotRunning),
        // The matrix's tasks are built-in: no worker to move with.
        (_, "adopt") => Err(Fenced),
        (Pending, _) => Err(NotRunning),

        (Running | WaitingForAnswer, "start") => Err(AlreadyStarted),
        (Running, "progress") => Ok(Running),
        (Running, "ask") => Ok(WaitingForAnswer),
        (WaitingForAnswer, "progress" | "ask") => Err(NotRunning),
        (_, "complete") => Ok(Completed),
        // Stopping without a cancel request is a failure of the task's code.
        (_, "fail" | "stopped") => Ok(Failed),
        (Running, "answer") => Err(NotWaiting),
        (WaitingForAnswer, "answer") => Ok(Running),
        (_, "soft_cancel" | "budget_exhausted") => Ok(state),
        (_, "hard_cancel") => Ok(Cancelled),
        (_, "escalate" | "time_out") => Err(NotDue),
        (_, "owner_lost") => Ok(Failed),
        other => unreachable!("no expectation for {other:?}"),
    }
}

#[test]
fn every_state_and_event_pair_behaves_as_the_table_says() {
    for state in TaskState::ALL {
        let task = task_in(state);
        assert_eq!(task.state, state);
        for (name, event) in every_event() {
            let got = apply(&task, &event, t(10)).map(|next| next.expect("changed").state);
            assert_eq!(got, expected(state, name), "{state:?} × {name}");
        }
    }
}

#[test]
fn every_change_bumps_the_version_by_exactly_one() {
    for state in TaskState::ALL {
        let task = task_in(state);
        for (name, event) in every_event() {
            if let Ok(Some(next)) = apply(&task, &event, t(10)) {
                assert_eq!(next.version, task.version + 1, "{state:?} × {name}");
                assert_eq!(next.updated_at, t(10));
            }
        }
    }
}

#[test]
fn start_sets_owner_attempt_and_start_time() {
    let task = running();
    assert_eq!(task.owner, OWNER);
    assert_eq!(task.attempt, 1);
    assert_eq!(task.started_at, Some(t(1)));
}

#[test]
fn reports_from_another_owner_or_attempt_are_fenced() {
    let task = running();
    for fence in [
        Fence {
            owner: "replica-b".into(),
            attempt: 1,
        },
        Fence {
            owner: OWNER.into(),
            attempt: 2,
        },
    ] {
        let event = Event::Report {
            fence,
            report: Report::Complete { result: json!(1) },
        };
        assert_eq!(apply(&task, &event, t(5)), Err(Rejection::Fenced));
    }
}

#[test]
fn checkpoints_append_partial_results_and_clamp_progress() {
    let mut task = running();
    for (i, fraction) in [0.5, 7.0].into_iter().enumerate() {
        let event = report(Report::Progress {
            fraction,
            message: format!("step {i}"),
            partial_result: Some(json!(i)),
            usage: Usage::new(),
        });
        task = apply(&task, &event, t(5)).unwrap().unwrap();
    }
    assert_eq!(task.partial_results, vec![json!(0), json!(1)]);
    assert_eq!(task.progress.fraction, 1.0);
    assert_eq!(task.progress.message, "step 1");
}

const SMALL: CheckpointLimits = CheckpointLimits {
    max_count: 3,
    max_bytes: 64,
};

fn checkpoint(task: &Task, partial: Json) -> Task {
    let event = report(Report::Progress {
        fraction: 0.5,
        message: "step".to_owned(),
        partial_result: Some(partial),
        usage: Usage::new(),
    });
    apply_within(task, &event, t(5), SMALL).unwrap().unwrap()
}

#[test]
fn checkpoints_beyond_the_count_drop_the_oldest_and_count_them() {
    let mut task = running();
    for i in 0..10 {
        task = checkpoint(&task, json!(i));
        assert!(task.partial_results.len() <= SMALL.max_count);
    }
    assert_eq!(task.partial_results, vec![json!(7), json!(8), json!(9)]);
    assert_eq!(task.partial_results_dropped, 7);
    assert_eq!(
        task.version,
        running().version + 10,
        "every report is still a version"
    );
}

#[test]
fn checkpoints_beyond_the_bytes_drop_the_oldest() {
    let mut task = running();
    let thirty = json!("x".repeat(28));
    for _ in 0..3 {
        task = checkpoint(&task, thirty.clone());
    }
    assert_eq!(task.partial_results.len(), 2, "three would be 90 bytes");
    assert_eq!(task.partial_results_dropped, 1);
    assert!(task.partial_results.bytes() <= SMALL.max_bytes);
}

#[test]
fn a_checkpoint_larger_than_the_budget_is_not_kept_but_its_progress_is() {
    let task = checkpoint(&running(), json!(1));
    let event = report(Report::Progress {
        fraction: 0.9,
        message: "huge".to_owned(),
        partial_result: Some(json!("y".repeat(100))),
        usage: Usage::new(),
    });
    let next = apply_within(&task, &event, t(6), SMALL).unwrap().unwrap();
    assert_eq!(next.partial_results, vec![json!(1)], "the others are kept");
    assert_eq!(next.partial_results_dropped, 1);
    assert_eq!(next.progress.message, "huge");
    assert_eq!(next.version, task.version + 1);
}

#[test]
fn every_event_keeps_the_bounded_checkpoints_and_the_dropped_count() {
    for state in TaskState::ALL.into_iter().filter(|s| !s.is_terminal()) {
        let mut task = task_in(state);
        for i in 0..5 {
            let mut next = task.clone();
            next.partial_results_dropped += next.partial_results.push(json!(i), SMALL);
            task = next;
        }
        for (name, event) in every_event() {
            if let Ok(Some(next)) = apply_within(&task, &event, t(1000), SMALL) {
                assert!(
                    next.partial_results.len() <= SMALL.max_count,
                    "{state:?} {name}"
                );
                assert!(
                    next.partial_results.bytes() <= SMALL.max_bytes,
                    "{state:?} {name}"
                );
                let added = (next.partial_results.len() + next.partial_results_dropped as usize)
                    - (task.partial_results.len() + task.partial_results_dropped as usize);
                assert!(added <= 1, "{state:?} {name}: at most the one reported");
                if added == 0 {
                    assert!(
                        next.partial_results
                            .shares_storage_with(&task.partial_results),
                        "{state:?} {name}: a version without a checkpoint copies none"
                    );
                }
            }
        }
    }
}

#[test]
fn soft_cancel_records_the_request_and_stopping_ends_cancelled_with_partials() {
    let mut task = running();
    task = apply(
        &task,
        &report(Report::Progress {
            fraction: 0.5,
            message: String::new(),
            partial_result: Some(json!("half")),
            usage: Usage::new(),
        }),
        t(2),
    )
    .unwrap()
    .unwrap();
    let cancel = Event::SoftCancel {
        reason: "user".into(),
        grace: secs(30),
    };
    task = apply(&task, &cancel, t(2)).unwrap().unwrap();
    let info = task.cancel.clone().unwrap();
    assert_eq!(info.mode, CancelMode::Soft);
    assert_eq!(info.reason, "user");
    assert_eq!(info.requested_at, t(2));
    assert_eq!(info.grace_deadline, Some(t(32)));
    assert_eq!(task.state, TaskState::Running);

    let stopped = report(Report::Stopped {
        result: json!({"steps": 1}),
    });
    let done = apply(&task, &stopped, t(3)).unwrap().unwrap();
    assert_eq!(done.state, TaskState::Cancelled);
    assert_eq!(done.partial_results, vec![json!("half")]);
    assert_eq!(done.result, Some(json!({"steps": 1})));
    assert_eq!(done.finished_at, Some(t(3)));
}

#[test]
fn a_repeated_soft_cancel_is_harmless_but_may_shorten_the_grace() {
    let first = Event::SoftCancel {
        reason: "first".into(),
        grace: secs(30),
    };
    let task = apply(&running(), &first, t(1)).unwrap().unwrap();
    let later = Event::SoftCancel {
        reason: "second".into(),
        grace: secs(60),
    };
    assert_eq!(apply(&task, &later, t(2)), Ok(None));
    let sooner = Event::SoftCancel {
        reason: "second".into(),
        grace: secs(10),
    };
    let next = apply(&task, &sooner, t(2)).unwrap().unwrap();
    let info = next.cancel.unwrap();
    assert_eq!(info.grace_deadline, Some(t(12)), "now + the shorter grace");
    assert_eq!(info.reason, "first", "the first reason stands");
}

#[test]
fn escalation_applies_only_after_the_grace_deadline() {
    let cancel = Event::SoftCancel {
        reason: "user".into(),
        grace: secs(29),
    };
    let task = apply(&waiting(), &cancel, t(1)).unwrap().unwrap();
    assert_eq!(
        apply(&task, &Event::Escalate, t(29)),
        Err(Rejection::NotDue)
    );
    let done = apply(&task, &Event::Escalate, t(30)).unwrap().unwrap();
    assert_eq!(done.state, TaskState::Cancelled);
    let info = done.cancel.unwrap();
    assert_eq!(info.mode, CancelMode::Hard);
    assert!(info.escalated);
    assert_eq!(info.reason, "user");
    assert!(done.question.is_empty(), "a finished task asks nothing");
}

#[test]
fn hard_cancel_ends_the_task_and_later_reports_change_nothing() {
    let done = apply(
        &running(),
        &Event::HardCancel {
            reason: "now".into(),
        },
        t(2),
    )
    .unwrap()
    .unwrap();
    assert_eq!(done.state, TaskState::Cancelled);
    let info = done.cancel.clone().unwrap();
    assert_eq!((info.mode, info.escalated), (CancelMode::Hard, false));
    let late = report(Report::Complete { result: json!(1) });
    assert_eq!(
        apply(&done, &late, t(3)),
        Err(Rejection::Terminal(TaskState::Cancelled))
    );
}

#[test]
fn completion_wins_over_a_pending_soft_cancel() {
    let cancel = Event::SoftCancel {
        reason: "user".into(),
        grace: secs(30),
    };
    let task = apply(&running(), &cancel, t(1)).unwrap().unwrap();
    let done = apply(&task, &report(Report::Complete { result: json!(1) }), t(2))
        .unwrap()
        .unwrap();
    assert_eq!(done.state, TaskState::Completed);
}

#[test]
fn a_task_cannot_ask_once_a_cancel_is_pending() {
    let cancel = Event::SoftCancel {
        reason: "user".into(),
        grace: secs(30),
    };
    let task = apply(&running(), &cancel, t(1)).unwrap().unwrap();
    let ask = report(Report::Ask {
        question: "q".into(),
        timeout: None,
    });
    assert_eq!(apply(&task, &ask, t(2)), Err(Rejection::CancelPending));
}

#[test]
fn answering_resumes_the_task_and_keeps_the_answer() {
    let task = apply(
        &waiting(),
        &Event::Answer {
            answer: "42".into(),
        },
        t(3),
    )
    .unwrap()
    .unwrap();
    assert_eq!(task.state, TaskState::Running);
    assert_eq!(task.answer, "42");
    assert!(task.question.is_empty());
}

fn running_with_timeout() -> Task {
    let mut task = pending();
    task.timeout = Some(Duration::from_secs(10));
    apply(
        &task,
        &Event::Start {
            owner: OWNER.into(),
            worker: String::new(),
        },
        t(1),
    )
    .unwrap()
    .unwrap()
}

#[test]
fn timeout_soft_cancels_then_the_task_fails_with_deadline_exceeded() {
    let task = running_with_timeout();
    let time_out = Event::TimeOut { grace: secs(30) };
    assert_eq!(apply(&task, &time_out, t(10)), Err(Rejection::NotDue));
    let task = apply(&task, &time_out, t(11)).unwrap().unwrap();
    let info = task.cancel.clone().unwrap();
    assert!(info.deadline_exceeded);
    assert_eq!(info.reason, DEADLINE_EXCEEDED);
    assert_eq!(
        apply(&task, &time_out, t(12)),
        Ok(None),
        "a second timeout is harmless"
    );

    let stopped = apply(&task, &report(Report::Stopped { result: json!(0) }), t(12))
        .unwrap()
        .unwrap();
    assert_eq!(
        (stopped.state, stopped.error.as_str()),
        (TaskState::Failed, DEADLINE_EXCEEDED)
    );

    let escalated = apply(&task, &Event::Escalate, t(41)).unwrap().unwrap();
    assert_eq!(
        (escalated.state, escalated.error.as_str()),
        (TaskState::Failed, DEADLINE_EXCEEDED)
    );
    assert!(escalated.cancel.unwrap().escalated);
}

#[test]
fn a_timeout_leaves_an_earlier_cancel_alone() {
    let task = running_with_timeout();
    let cancel = Event::SoftCancel {
        reason: "user".into(),
        grace: secs(30),
    };
    let task = apply(&task, &cancel, t(2)).unwrap().unwrap();
    assert_eq!(
        apply(&task, &Event::TimeOut { grace: secs(50) }, t(11)),
        Ok(None)
    );
}

#[test]
fn a_lost_owner_fails_its_task_unless_a_cancel_was_requested() {
    let lost = Event::OwnerLost {
        owner: OWNER.into(),
    };
    let failed = apply(&running(), &lost, t(5)).unwrap().unwrap();
    assert_eq!(failed.state, TaskState::Failed);
    assert_eq!(failed.error, owner_lost_error(OWNER));

    let cancel = Event::SoftCancel {
        reason: "user".into(),
        grace: secs(30),
    };
    let asked = apply(&waiting(), &cancel, t(3)).unwrap().unwrap();
    assert_eq!(
        apply(&asked, &lost, t(5)).unwrap().unwrap().state,
        TaskState::Cancelled
    );

    let other = Event::OwnerLost {
        owner: "replica-b".into(),
    };
    assert_eq!(apply(&running(), &other, t(5)), Err(Rejection::Fenced));
}

#[test]
fn fences_allow_only_the_same_run_or_the_next_start() {
    let pending = pending();
    let running = apply(
        &pending,
        &Event::Start {
            owner: OWNER.into(),
            worker: String::new(),
        },
        t(1),
    )
    .unwrap()
    .unwrap();
    assert!(
        pending.fences_allow(&running),
        "a start takes the next attempt"
    );
    let progressed = apply(
        &running,
        &report(Report::Ask {
            question: "q".into(),
            timeout: None,
        }),
        t(2),
    )
    .unwrap()
    .unwrap();
    assert!(running.fences_allow(&progressed));
    let mut stolen = progressed.clone();
    stolen.owner = "replica-b".into();
    assert!(
        !running.fences_allow(&stolen),
        "another owner may not write"
    );
    let mut restarted = progressed;
    restarted.attempt += 1;
    assert!(
        !running.fences_allow(&restarted),
        "only a PENDING task starts a new attempt"
    );
}

#[test]
fn a_moving_worker_takes_its_task_along_in_the_same_attempt() {
    for state in [TaskState::Running, TaskState::WaitingForAnswer] {
        let mut task = task_in(state);
        task.worker = FIRST_CONNECTION.into();
        let adopted = apply(&task, &adopt(1), t(5)).unwrap().unwrap();
        assert_eq!(adopted.state, state, "the task runs on as it was");
        assert_eq!(
            (adopted.owner.as_str(), adopted.worker.as_str()),
            ("replica-b", SECOND_CONNECTION)
        );
        let mut back = adopted.clone();
        back.version += 1;
        back.owner = task.owner.clone();
        back.worker = task.worker.clone();
        assert!(
            !adopted.fences_allow(&back),
            "the former owner cannot pass its old connection off as a move"
        );
        assert_eq!(adopted.attempt, task.attempt);
        assert!(task.fences_allow(&adopted), "the stores accept the move");
        assert_eq!(
            apply(&adopted, &adopt(1), t(6)),
            Err(Rejection::Fenced),
            "no second connection takes a task over on its own replica"
        );
        // The previous owner's reports are fenced from now on.
        assert_eq!(
            apply(
                &adopted,
                &report(Report::Complete { result: json!(1) }),
                t(6)
            ),
            Err(Rejection::Fenced)
        );
        assert_eq!(
            apply(&task, &adopt(2), t(5)),
            Err(Rejection::Fenced),
            "only the attempt the worker runs moves"
        );
        let other_worker = Event::Adopt {
            owner: "replica-b".into(),
            worker: "someone-else/0190a000-0000-7000-8000-000000000003".into(),
            attempt: 1,
        };
        assert_eq!(
            apply(&task, &other_worker, t(5)),
            Err(Rejection::Fenced),
            "only the worker running the task takes it along"
        );
    }
    let mut cancelling = running();
    cancelling.worker = FIRST_CONNECTION.into();
    let cancelling = apply(
        &cancelling,
        &Event::SoftCancel {
            reason: "r".into(),
            grace: secs(100),
        },
        t(2),
    )
    .unwrap()
    .unwrap();
    let adopted = apply(&cancelling, &adopt(1), t(3)).unwrap().unwrap();
    assert_eq!(
        adopted.cancel, cancelling.cancel,
        "a pending cancel moves along"
    );
}

fn any_event() -> impl Strategy<Value = Event> {
    let names: Vec<Event> = every_event().into_iter().map(|(_, event)| event).collect();
    (prop::sample::select(names), 0u64..200).prop_map(|(event, grace)| match event {
        Event::SoftCancel { reason, .. } => Event::SoftCancel {
            reason,
            grace: secs(grace),
        },
        Event::TimeOut { .. } => Event::TimeOut { grace: secs(grace) },
        other => other,
    })
}

proptest! {
    /// Whatever happens, a terminal state is never left and versions only grow one by one.
    #[test]
    fn terminal_states_are_final_and_versions_are_contiguous(
        events in prop::collection::vec((any_event(), 0u64..200), 1..40)
    ) {
        let mut task = running_with_timeout();
        let mut terminal: Option<TaskState> = None;
        for (event, secs) in events {
            match apply(&task, &event, t(secs)) {
                Ok(Some(next)) => {
                    prop_assert!(terminal.is_none(), "changed after {terminal:?}");
                    prop_assert!(next.partial_results.len() <= CheckpointLimits::DEFAULT.max_count);
                    prop_assert_eq!(next.version, task.version + 1);
                    if next.state.is_terminal() {
                        terminal = Some(next.state);
                        prop_assert!(next.finished_at.is_some());
                    }
                    task = next;
                }
                Ok(None) => prop_assert!(terminal.is_none()),
                Err(Rejection::Terminal(state)) => prop_assert_eq!(Some(state), terminal),
                Err(_) => prop_assert!(terminal.is_none()),
            }
        }
    }
}

fn usage(pairs: &[(&str, f64)]) -> Usage {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

fn spend(task: &Task, spent: Usage, at: SystemTime) -> Task {
    apply(
        task,
        &report(Report::Progress {
            fraction: 0.1,
            message: String::new(),
            partial_result: None,
            usage: spent,
        }),
        at,
    )
    .unwrap()
    .unwrap()
}

#[test]
fn progress_adds_usage_to_the_task_and_its_subtree() {
    let once = spend(&running(), usage(&[("tokens", 10.0)]), t(2));
    let twice = spend(&once, usage(&[("tokens", 5.5), ("cost_usd", 0.25)]), t(3));
    assert_eq!(twice.usage, usage(&[("tokens", 15.5), ("cost_usd", 0.25)]));
    assert_eq!(twice.subtree_usage, twice.usage);
}

fn exhausted_event() -> Event {
    Event::BudgetExhausted {
        exhausted: Exhausted {
            dimension: "output_tokens".into(),
            used: 10000.0,
            limit: 10000.0,
        },
        grace: secs(30),
    }
}

#[test]
fn an_exhausted_budget_soft_cancels_naming_the_limit() {
    let next = apply(&running(), &exhausted_event(), t(5))
        .unwrap()
        .unwrap();
    assert_eq!(next.state, TaskState::Running);
    let cancel = next.cancel.clone().unwrap();
    assert_eq!(cancel.mode, CancelMode::Soft);
    assert_eq!(
        cancel.reason,
        "budget exhausted: output_tokens 10000 of 10000"
    );
    assert_eq!(cancel.budget_exhausted, "output_tokens");
    assert_eq!(cancel.grace_deadline, Some(t(35)));
    // Stopping then ends it CANCELLED (not FAILED), partial results kept.
    let stopped = apply(&next, &report(Report::Stopped { result: json!(1) }), t(6))
        .unwrap()
        .unwrap();
    assert_eq!(stopped.state, TaskState::Cancelled);
    // A PENDING task is cancelled at once.
    let pending = apply(&pending(), &exhausted_event(), t(5))
        .unwrap()
        .unwrap();
    assert_eq!(pending.state, TaskState::Cancelled);
    assert_eq!(pending.cancel.unwrap().budget_exhausted, "output_tokens");
}

#[test]
fn an_exhausted_budget_leaves_an_earlier_cancel_alone() {
    let cancelling = apply(
        &running(),
        &Event::SoftCancel {
            reason: "user".into(),
            grace: secs(10),
        },
        t(2),
    )
    .unwrap()
    .unwrap();
    assert_eq!(apply(&cancelling, &exhausted_event(), t(3)), Ok(None));
}

fn asked_with_timeout() -> Task {
    apply(
        &running(),
        &report(Report::Ask {
            question: "go on?".into(),
            timeout: Some(secs(10)),
        }),
        t(2),
    )
    .unwrap()
    .unwrap()
}

#[test]
fn an_unanswered_question_times_out_at_its_deadline() {
    let waiting = asked_with_timeout();
    assert_eq!(waiting.question_deadline, Some(t(12)));
    assert_eq!(
        apply(&waiting, &Event::AnswerTimeOut, t(11)),
        Err(Rejection::NotDue)
    );
    let resumed = apply(&waiting, &Event::AnswerTimeOut, t(12))
        .unwrap()
        .unwrap();
    assert_eq!(resumed.state, TaskState::Running);
    assert!(resumed.answer_timed_out);
    assert!(resumed.answer.is_empty() && resumed.question.is_empty());
    assert_eq!(resumed.question_deadline, None);
    // Too late to answer now.
    assert_eq!(
        apply(
            &resumed,
            &Event::Answer {
                answer: "yes".into()
            },
            t(13)
        ),
        Err(Rejection::NotWaiting)
    );
    assert_eq!(
        apply(&resumed, &Event::AnswerTimeOut, t(13)),
        Err(Rejection::NotWaiting)
    );
}

#[test]
fn an_answer_in_time_clears_the_deadline() {
    let answered = apply(
        &asked_with_timeout(),
        &Event::Answer {
            answer: "yes".into(),
        },
        t(5),
    )
    .unwrap()
    .unwrap();
    assert_eq!(answered.question_deadline, None);
    assert!(!answered.answer_timed_out);
    assert_eq!(answered.answer, "yes");
}
