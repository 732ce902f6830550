use std::time::{Duration, SystemTime};

use super::*;
use crate::task::{CancelInfo, CancelOrigin, NewTask, TaskState};

fn running() -> Task {
    let mut task = Task::new(
        crate::task::TaskId::now_v7(),
        NewTask::default(),
        SystemTime::UNIX_EPOCH,
    );
    task.state = TaskState::Running;
    task.owner = "a".into();
    task.attempt = 1;
    task
}

fn next(task: &Task, change: impl FnOnce(&mut Task)) -> Task {
    let mut after = task.clone();
    after.version += 1;
    change(&mut after);
    after
}

fn cancel(origin: CancelOrigin) -> CancelInfo {
    CancelInfo {
        mode: CancelMode::Soft,
        reason: "enough".into(),
        requested_at: SystemTime::UNIX_EPOCH,
        grace_deadline: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(5)),
        escalated: false,
        deadline_exceeded: false,
        origin,
        budget_exhausted: String::new(),
        requested_by: String::new(),
    }
}

#[test]
fn a_new_cancel_is_requested_once_with_its_origin() {
    let before = running();
    let origin = CancelOrigin {
        replica: "b".into(),
        trace_context: [("traceparent".to_owned(), "00-1-2-01".to_owned())].into(),
    };
    let after = next(&before, |t| t.cancel = Some(cancel(origin.clone())));
    assert_eq!(
        changes(&before, &after),
        vec![Change::CancelRequested {
            mode: CancelMode::Soft,
            reason: "enough".into(),
            replica: "b".into(),
            link: origin.trace_context,
        }]
    );
    // A later version of the same cancel (a shorter grace) is no new request.
    let again = next(&after, |t| t.cancel.as_mut().unwrap().grace_deadline = None);
    assert_eq!(changes(&after, &again), vec![]);
}

#[test]
fn escalation_and_the_final_state_are_recorded() {
    let before = next(&running(), |t| {
        t.cancel = Some(cancel(CancelOrigin::default()))
    });
    let after = next(&before, |t| {
        t.cancel.as_mut().unwrap().escalated = true;
        t.state = TaskState::Cancelled;
    });
    assert_eq!(
        changes(&before, &after),
        vec![
            Change::CancelEscalated,
            Change::Finished(TaskState::Cancelled)
        ]
    );
}

#[test]
fn checkpoints_count_kept_and_dropped_ones() {
    let before = running();
    let after = next(&before, |t| {
        t.partial_results
            .push(serde_json::json!(1), Default::default());
    });
    assert_eq!(
        changes(&before, &after),
        vec![Change::Checkpoint { reported: 1 }]
    );
    let dropped = next(&after, |t| t.partial_results_dropped += 1);
    assert_eq!(
        changes(&after, &dropped),
        vec![Change::Checkpoint { reported: 2 }]
    );
}

#[test]
fn questions_are_asked_and_answered() {
    let before = running();
    let asked = next(&before, |t| {
        t.state = TaskState::WaitingForAnswer;
        t.question = "go on?".into();
    });
    assert_eq!(changes(&before, &asked), vec![Change::QuestionAsked]);
    let answered = next(&asked, |t| {
        t.state = TaskState::Running;
        t.answer = "yes".into();
    });
    assert_eq!(changes(&asked, &answered), vec![Change::QuestionAnswered]);
    let completed = next(&answered, |t| t.state = TaskState::Completed);
    assert_eq!(
        changes(&answered, &completed),
        vec![Change::Finished(TaskState::Completed)]
    );
}
