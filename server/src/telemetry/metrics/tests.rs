use std::time::{Duration, SystemTime};

use super::*;
use crate::task::{CancelOrigin, NewTask, TaskId};

fn task(state: TaskState) -> Task {
    let mut task = Task::new(
        TaskId::now_v7(),
        NewTask {
            kind: "sleep".to_owned(),
            ..NewTask::default()
        },
        SystemTime::UNIX_EPOCH,
    );
    task.state = state;
    task
}

fn encoded(metrics: &Metrics) -> String {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &metrics.registry).unwrap();
    text
}

#[test]
fn a_start_counts_once_with_its_waits() {
    let metrics = Metrics::new();
    let before = task(TaskState::Pending);
    let mut after = before.clone();
    after.state = TaskState::Running;
    after.attempt = 1;
    after.updated_at = before.created_at + Duration::from_millis(3);
    metrics.task_changed(&before, &after);
    let text = encoded(&metrics);
    assert!(
        text.contains("reins_tasks_started_total{kind=\"sleep\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("reins_dispatch_seconds_count{kind=\"sleep\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("reins_dispatch_seconds_bucket{kind=\"sleep\",le=\"0.002\"} 0\n")
            && text.contains("reins_dispatch_seconds_bucket{kind=\"sleep\",le=\"0.005\"} 1\n"),
        "3 ms: {text}"
    );
    assert!(
        text.contains("reins_queue_wait_seconds_count 1\n"),
        "{text}"
    );
    // A progress report of the running task is no start.
    metrics.task_changed(&after, &after);
    assert!(encoded(&metrics).contains("reins_tasks_started_total{kind=\"sleep\"} 1\n"));
}

#[test]
fn terminal_states_and_escalations_count_on_the_change_that_made_them() {
    let metrics = Metrics::new();
    let running = task(TaskState::Running);
    let mut cancelled = running.clone();
    cancelled.state = TaskState::Cancelled;
    cancelled.cancel = Some(CancelInfo {
        mode: CancelMode::Soft,
        reason: String::new(),
        requested_at: SystemTime::UNIX_EPOCH,
        grace_deadline: None,
        escalated: true,
        deadline_exceeded: false,
        origin: CancelOrigin::default(),
        budget_exhausted: String::new(),
        requested_by: String::new(),
    });
    metrics.task_changed(&running, &cancelled);
    // A terminal record is never changed again; were it, nothing would count twice.
    metrics.task_changed(&cancelled, &cancelled);
    let text = encoded(&metrics);
    assert!(
        text.contains("reins_tasks_finished_total{kind=\"sleep\",state=\"cancelled\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("reins_cancel_escalations_total{kind=\"sleep\"} 1\n"),
        "{text}"
    );
}

#[test]
fn a_stop_is_timed_from_the_recorded_cancel() {
    let metrics = Metrics::new();
    let requested_at = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
    let cancel = CancelInfo {
        mode: CancelMode::Hard,
        reason: String::new(),
        requested_at,
        grace_deadline: None,
        escalated: false,
        deadline_exceeded: false,
        origin: CancelOrigin::default(),
        budget_exhausted: String::new(),
        requested_by: String::new(),
    };
    metrics.code_stopped("exec", &cancel, requested_at + Duration::from_micros(150));
    // Another replica's clock may be ahead: never a negative duration.
    metrics.code_stopped("exec", &cancel, requested_at - Duration::from_millis(1));
    let text = encoded(&metrics);
    let bucket = |le: &str| {
        format!("reins_cancel_stop_seconds_bucket{{mode=\"hard\",kind=\"exec\",le=\"{le}\"}}")
    };
    assert!(
        text.contains(&format!("{} 1\n", bucket("0.0001"))),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} 2\n", bucket("0.0002"))),
        "{text}"
    );
}

#[test]
fn guards_count_while_they_live() {
    let metrics = Metrics::new();
    let first = metrics.running("sleep");
    let second = metrics.running("sleep");
    let watch = metrics.watching();
    assert!(encoded(&metrics).contains("reins_tasks_running{kind=\"sleep\"} 2\n"));
    drop(first);
    drop(watch);
    let text = encoded(&metrics);
    assert!(
        text.contains("reins_tasks_running{kind=\"sleep\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("reins_watchers 0\n"), "{text}");
    drop(second);
}

#[test]
fn worker_gauges_show_the_workers_of_the_last_scrape_only() {
    let metrics = Metrics::new();
    let gpu = WorkerKindOccupancy {
        kind: "gpu".to_owned(),
        workers: 2,
        used: 3,
        free: 5,
    };
    metrics.set_workers(std::slice::from_ref(&gpu));
    let text = encoded(&metrics);
    assert!(
        text.contains("reins_workers_connected{kind=\"gpu\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("reins_worker_slots{kind=\"gpu\",state=\"used\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("reins_worker_slots{kind=\"gpu\",state=\"free\"} 5\n"),
        "{text}"
    );
    metrics.set_workers(&[]);
    assert!(!encoded(&metrics).contains("kind=\"gpu\""));
}

#[test]
fn build_info_names_the_version() {
    let text = encoded(&Metrics::new());
    let line = format!(
        "reins_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&line), "{text}");
}
