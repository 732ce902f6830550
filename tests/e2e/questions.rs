//! Questions: a task asks, waits in WAITING_FOR_ANSWER, and AnswerTask resumes it.

use reins_client::proto::TaskState;
use reins_e2e::{Reinsd, asking, json_of, reason, start_sleep, wait_finished, wait_state};
use tonic::Code;

#[tokio::test]
async fn an_answer_resumes_the_task_and_reaches_its_code() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = client.start(asking("which colour?")).await.unwrap();
    let waiting = wait_state(&client, &task.id, TaskState::WaitingForAnswer).await;
    assert_eq!(waiting.question, "which colour?");

    let resumed = client.answer(&task.id, "blue").await.unwrap();
    assert_eq!(resumed.state(), TaskState::Running);
    assert!(resumed.question.is_empty());
    assert_eq!(resumed.answer, "blue");

    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Completed);
    assert_eq!(json_of(done.result.as_ref())["answer"], "blue");
}

#[tokio::test]
async fn answering_a_task_that_is_not_waiting_is_a_failed_precondition() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = start_sleep(&client, 100, 100).await;
    let status = client.answer(&task.id, "unasked").await.unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::FailedPrecondition, "TASK_NOT_WAITING")
    );

    // Answering twice: the second finds the task running again.
    let asker = client.start(asking("once?")).await.unwrap();
    wait_state(&client, &asker.id, TaskState::WaitingForAnswer).await;
    client.answer(&asker.id, "yes").await.unwrap();
    let status = client.answer(&asker.id, "again").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn a_soft_cancel_wakes_a_task_waiting_for_an_answer() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = client.start(asking("never answered")).await.unwrap();
    wait_state(&client, &task.id, TaskState::WaitingForAnswer).await;
    let response = client.soft_cancel(&task.id, "no time", None).await.unwrap();
    assert_eq!(
        response.outcome(),
        reins_client::proto::CancelOutcome::Requested
    );
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Cancelled);
    assert!(
        !done.cancel.unwrap().escalated,
        "it stopped by itself, well before the default grace"
    );
    assert_eq!(
        done.partial_results.len(),
        1,
        "the checkpoint before the question is kept"
    );
    assert!(done.question.is_empty());
}

#[tokio::test]
async fn an_unanswered_question_times_out_and_the_task_goes_on() {
    let server = Reinsd::start();
    let client = server.client().await;
    let task = client
        .start(
            reins_client::StartTask::new("sleep").params(serde_json::json!({
                "steps": 2, "step_ms": 10, "ask": "go on?", "ask_timeout_ms": 300
            })),
        )
        .await
        .unwrap();
    let waiting = wait_state(&client, &task.id, TaskState::WaitingForAnswer).await;
    assert!(waiting.question_deadline.is_some());
    let resumed = reins_e2e::wait_for(&client, &task.id, "the timeout", |task| {
        task.answer_timed_out
    })
    .await;
    assert_eq!(resumed.state(), TaskState::Running);
    assert!(resumed.answer.is_empty() && resumed.question.is_empty());
    // Too late to answer now.
    let status = client.answer(&task.id, "yes").await.unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::FailedPrecondition, "TASK_NOT_WAITING")
    );
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Completed);
    assert_eq!(json_of(done.result.as_ref())["answer_timed_out"], true);
    assert!(done.answer_timed_out, "recorded on the task");
}

#[tokio::test]
async fn an_answer_in_time_beats_the_deadline_and_a_cancel_still_wakes_at_once() {
    let server = Reinsd::start();
    let client = server.client().await;
    let asking_within = |ms: u64| {
        reins_client::StartTask::new("sleep").params(serde_json::json!({
            "steps": 2, "step_ms": 10, "ask": "now?", "ask_timeout_ms": ms
        }))
    };
    let task = client.start(asking_within(60_000)).await.unwrap();
    wait_state(&client, &task.id, TaskState::WaitingForAnswer).await;
    let resumed = client.answer(&task.id, "yes").await.unwrap();
    assert!(!resumed.answer_timed_out);
    assert!(resumed.question_deadline.is_none());
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(json_of(done.result.as_ref())["answer"], "yes");

    let task = client.start(asking_within(60_000)).await.unwrap();
    wait_state(&client, &task.id, TaskState::WaitingForAnswer).await;
    client.soft_cancel(&task.id, "stop", None).await.unwrap();
    let done = wait_finished(&client, &task.id).await;
    assert_eq!(done.state(), TaskState::Cancelled);
    assert!(
        !done.cancel.unwrap().escalated,
        "woken at once, not escalated"
    );
}
