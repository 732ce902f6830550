//! The supervisor on its own, without an engine or a store: its port is one record kept
//! in memory and changed by the real state machine.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use clap::Parser;
use serde_json::json;
use tokio::sync::Notify;

use super::*;
use crate::config::Config;
use crate::executor::Kinds;
use crate::port::TaskPort;
use crate::store::{Published, StoreError};
use crate::task::state_machine::{self, Event, Fence, Rejection, Report};
use crate::task::{NewTask, TaskState};

/// One task's record, changed only through the state machine.
struct OneRecord(Mutex<Task>);

impl OneRecord {
    fn current(&self) -> Task {
        self.0.lock().unwrap().clone()
    }

    fn apply(&self, event: Event) -> Result<Task, Rejection> {
        let mut record = self.0.lock().unwrap();
        if let Some(next) = state_machine::apply(&record, &event, SystemTime::now())? {
            *record = next;
        }
        Ok(record.clone())
    }
}

#[async_trait]
impl TaskPort for OneRecord {
    async fn read(&self, _id: TaskId) -> Result<Option<Task>, StoreError> {
        Ok(Some(self.current()))
    }

    async fn report(&self, _id: TaskId, fence: &Fence, report: Report) -> Result<Task, Rejection> {
        self.apply(Event::Report {
            fence: fence.clone(),
            report,
        })
    }

    async fn escalate(&self, _id: TaskId) -> Option<Task> {
        self.apply(Event::Escalate).ok()
    }

    async fn time_out(&self, _id: TaskId) -> Option<Task> {
        self.apply(Event::TimeOut {
            grace: Duration::ZERO,
        })
        .ok()
    }

    async fn answer_time_out(&self, _id: TaskId) -> Option<Task> {
        self.apply(Event::AnswerTimeOut).ok()
    }

    async fn budget_remaining(&self, _task: &Task) -> crate::task::Usage {
        crate::task::Usage::new()
    }
}

/// A supervisor with one slot running a `sleep` task with `params`.
fn running(params: serde_json::Value) -> (Arc<Supervisor>, Arc<OneRecord>, Arc<Notify>) {
    let spec = NewTask {
        kind: "sleep".into(),
        params: params.as_object().unwrap().clone(),
        ..NewTask::default()
    };
    let task = Task::new(TaskId::now_v7(), spec, SystemTime::now());
    let record = Arc::new(OneRecord(Mutex::new(task)));
    let started = record
        .apply(Event::Start {
            owner: "here".into(),
            worker: String::new(),
        })
        .unwrap();
    let freed = Arc::new(Notify::new());
    let supervisor = Arc::new(Supervisor::new(1, record.clone(), Arc::clone(&freed)));
    // The built-in kinds with the default policy: exec off, `sleep` on.
    let kinds = Kinds::builtin(Config::parse_from(["reinsd"]).exec_policy());
    let job = kinds
        .get("sleep")
        .unwrap()
        .prepare(&started.params)
        .unwrap();
    let slot = supervisor.try_reserve().expect("a free slot");
    supervisor.launch(started, Placement::Local(slot, job));
    (supervisor, record, freed)
}

const PATIENCE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_task_runs_to_completion_and_frees_its_place() {
    let (supervisor, record, freed) = running(json!({"steps": 2, "step_ms": 1}));
    assert!(!supervisor.has_room(), "the only slot is taken");
    tokio::time::timeout(PATIENCE, freed.notified())
        .await
        .expect("the place is freed");
    assert_eq!(record.current().state, TaskState::Completed);
    assert_eq!(record.current().partial_results.len(), 2);
    assert!(supervisor.has_room());
    assert!(supervisor.wait_idle(Duration::ZERO).await);
}

#[tokio::test]
async fn a_record_turned_terminal_stops_the_code_at_once() {
    let (supervisor, record, freed) = running(json!({"steps": 100_000, "step_ms": 10}));
    let id = record.current().id;
    let cancelled = record
        .apply(Event::HardCancel {
            reason: "stop".into(),
        })
        .unwrap();
    supervisor.route(Update::Changed(Published::new(cancelled.clone())));
    tokio::time::timeout(PATIENCE, freed.notified())
        .await
        .expect("the code stopped and its place is free");
    supervisor.wait_stopped(id, Duration::ZERO).await;
    assert!(supervisor.running().is_empty());
    assert_eq!(
        record.current(),
        cancelled,
        "nothing the stopped code did changed the record"
    );
}

#[tokio::test]
async fn a_soft_cancel_reaches_the_code_which_stops_at_its_checkpoint() {
    let (supervisor, record, freed) = running(json!({"steps": 100_000, "step_ms": 10}));
    let asked = record
        .apply(Event::SoftCancel {
            reason: "enough".into(),
            grace: Duration::from_secs(60),
        })
        .unwrap();
    supervisor.route(Update::Changed(Published::new(asked)));
    tokio::time::timeout(PATIENCE, freed.notified())
        .await
        .expect("the code stopped");
    let done = record.current();
    assert_eq!(done.state, TaskState::Cancelled);
    assert!(!done.cancel.unwrap().escalated, "it stopped by itself");
    assert_eq!(
        done.result.unwrap()["steps"],
        json!(100_000),
        "the result says what was done"
    );
}

#[tokio::test]
async fn a_registration_before_the_start_is_the_only_one_and_a_refused_start_leaves_nothing() {
    let record = Arc::new(OneRecord(Mutex::new(Task::new(
        TaskId::now_v7(),
        NewTask {
            kind: "sleep".into(),
            ..NewTask::default()
        },
        SystemTime::now(),
    ))));
    let id = record.current().id;
    let supervisor = Arc::new(Supervisor::new(1, record, Arc::new(Notify::new())));
    let starting = supervisor.expect(id).expect("nothing registered yet");
    assert!(
        supervisor.expect(id).is_none(),
        "a second start of the same task here is left out"
    );
    assert_eq!(supervisor.running(), vec![id]);
    drop(starting);
    assert!(
        supervisor.running().is_empty(),
        "the refused start is forgotten"
    );
    assert!(supervisor.wait_idle(Duration::ZERO).await);
}

#[tokio::test]
async fn a_change_routed_between_the_registration_and_the_launch_reaches_the_driver() {
    let spec = NewTask {
        kind: "sleep".into(),
        params: json!({"steps": 100_000, "step_ms": 10})
            .as_object()
            .unwrap()
            .clone(),
        ..NewTask::default()
    };
    let record = Arc::new(OneRecord(Mutex::new(Task::new(
        TaskId::now_v7(),
        spec,
        SystemTime::now(),
    ))));
    let freed = Arc::new(Notify::new());
    let supervisor = Arc::new(Supervisor::new(1, record.clone(), Arc::clone(&freed)));
    let starting = supervisor.expect(record.current().id).unwrap();
    let started = record
        .apply(Event::Start {
            owner: "here".into(),
            worker: String::new(),
        })
        .unwrap();
    // A hard cancel lands before the driver exists: it must not be lost.
    let cancelled = record
        .apply(Event::HardCancel {
            reason: "test".into(),
        })
        .unwrap();
    supervisor.route(Update::Changed(Published::new(cancelled)));
    let kinds = Kinds::builtin(Config::parse_from(["reinsd"]).exec_policy());
    let job = kinds
        .get("sleep")
        .unwrap()
        .prepare(&started.params)
        .unwrap();
    let slot = supervisor.try_reserve().expect("a free slot");
    supervisor.launch_started(starting, started, Placement::Local(slot, job));
    tokio::time::timeout(PATIENCE, freed.notified())
        .await
        .expect("the driver stopped the code on the cancel it was routed");
}
