//! `sleep`: the test and demo workhorse. It sleeps `steps` times for `step_ms`, reporting
//! progress `i/steps` and one checkpoint per step.
//!
//! Params: `steps` and `step_ms` (non-negative integers, required); `ignore_soft_cancel`
//! (simulates a stuck task that only a hard cancel stops); `ask` (a question asked after
//! the first step, whose answer goes into the result); `ask_timeout_ms` (how long that
//! question waits for an answer: unanswered, the task goes on and its result says
//! `"answer_timed_out": true`); `fail_at_step` (step `n`, counted from 1, fails instead of
//! finishing).
//!
//! Each step reports the usage `{"steps": 1}` with its checkpoint, so a budget such as
//! `{"steps": 3}` stops the task after exactly three steps.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::json;

use super::params::Params;
use super::{Interrupted, Job, Kind, Outcome, TaskContext};
use crate::error::Result;
use crate::task::{Json, JsonMap, Usage};

pub struct Sleep;

impl Kind for Sleep {
    fn name(&self) -> &'static str {
        "sleep"
    }

    fn prepare(&self, params: &JsonMap) -> Result<Box<dyn Job>> {
        let mut p = Params::new(params);
        let steps = p.required_count("steps");
        let step_ms = p.required_count("step_ms");
        let ignore_soft_cancel = p.bool("ignore_soft_cancel").unwrap_or(false);
        let ask = p.string("ask");
        let ask_timeout = p.count("ask_timeout_ms").map(Duration::from_millis);
        if ask_timeout.is_some() && ask.is_none() {
            p.reject("ask_timeout_ms", "needs `ask`");
        }
        if ask_timeout == Some(Duration::ZERO) {
            p.reject(
                "ask_timeout_ms",
                "must be positive; leave unset for no deadline",
            );
        }
        let fail_at_step = p.count("fail_at_step");
        if fail_at_step == Some(0) {
            p.reject("fail_at_step", "steps are counted from 1");
        }
        p.finish()?;
        Ok(Box::new(SleepJob {
            steps: steps.unwrap_or_default(),
            step: Duration::from_millis(step_ms.unwrap_or_default()),
            ignore_soft_cancel,
            ask,
            ask_timeout,
            fail_at_step,
        }))
    }
}

struct SleepJob {
    steps: u64,
    step: Duration,
    ignore_soft_cancel: bool,
    ask: Option<String>,
    ask_timeout: Option<Duration>,
    fail_at_step: Option<u64>,
}

/// How an `ask` ended, for the summary.
enum Answer {
    Given(String),
    TimedOut,
}

impl Job for SleepJob {
    fn run(self: Box<Self>, ctx: TaskContext) -> BoxFuture<'static, Outcome> {
        Box::pin(self.sleep(ctx))
    }
}

impl SleepJob {
    async fn sleep(self, mut ctx: TaskContext) -> Outcome {
        let mut answer: Option<Answer> = None;
        for step in 1..=self.steps {
            if !self.pause(&ctx).await {
                return Outcome::Stopped(self.summary(step - 1, &answer));
            }
            if self.fail_at_step == Some(step) {
                return Outcome::Failed {
                    error: format!("failed at step {step} (fail_at_step)"),
                    result: Some(self.summary(step - 1, &answer)),
                };
            }
            let fraction = step as f64 / self.steps as f64;
            let checkpoint = json!({ "step": step });
            let spent = Usage::from([("steps".to_owned(), 1.0)]);
            let message = format!("step {step}/{}", self.steps);
            if ctx
                .report_progress(fraction, message, Some(checkpoint), spent)
                .await
                .is_err()
            {
                return Outcome::Stopped(self.summary(step, &answer));
            }
            if step == 1
                && let Some(question) = &self.ask
            {
                match ctx.ask(question.clone(), self.ask_timeout).await {
                    Ok(text) => answer = Some(Answer::Given(text)),
                    Err(Interrupted::AnswerTimedOut) => answer = Some(Answer::TimedOut),
                    Err(Interrupted::CancelRequested) if self.ignore_soft_cancel => {}
                    Err(_) => return Outcome::Stopped(self.summary(step, &answer)),
                }
            }
            if ctx.is_cancel_requested() && !self.ignore_soft_cancel {
                return Outcome::Stopped(self.summary(step, &answer));
            }
        }
        Outcome::Completed(self.summary(self.steps, &answer))
    }

    /// Sleeps one step; false if a soft cancel interrupted it (and is not ignored).
    async fn pause(&self, ctx: &TaskContext) -> bool {
        if self.ignore_soft_cancel {
            tokio::time::sleep(self.step).await;
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(self.step) => true,
            () = ctx.cancel_requested() => false,
        }
    }

    fn summary(&self, steps_completed: u64, answer: &Option<Answer>) -> Json {
        let mut summary = json!({ "steps_completed": steps_completed, "steps": self.steps });
        match answer {
            Some(Answer::Given(answer)) => summary["answer"] = json!(answer),
            Some(Answer::TimedOut) => summary["answer_timed_out"] = json!(true),
            None => {}
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::Error;

    fn prepare(params: Json) -> Result<Box<dyn Job>> {
        Sleep.prepare(params.as_object().unwrap())
    }

    fn bad_fields(params: Json) -> Vec<String> {
        match prepare(params) {
            Err(Error::InvalidArgument(v)) => v.into_iter().map(|v| v.field).collect(),
            Err(other) => panic!("expected INVALID_ARGUMENT, got {other}"),
            Ok(_) => panic!("expected INVALID_ARGUMENT, got a job"),
        }
    }

    #[test]
    fn accepts_its_schema() {
        assert!(prepare(json!({"steps": 3, "step_ms": 10})).is_ok());
        assert!(prepare(json!({"steps": 0, "step_ms": 0, "ignore_soft_cancel": true, "ask": "?", "ask_timeout_ms": 5, "fail_at_step": 2})).is_ok());
    }

    #[test]
    fn refuses_wrong_types_missing_and_unknown_params() {
        assert_eq!(
            bad_fields(json!({"steps": "3", "step_ms": 10})),
            ["params.steps"]
        );
        assert_eq!(
            bad_fields(json!({"steps": 3, "step_ms": -1})),
            ["params.step_ms"]
        );
        assert_eq!(bad_fields(json!({"steps": 3})), ["params.step_ms"]);
        assert_eq!(
            bad_fields(
                json!({"steps": 1, "step_ms": 1, "ask": 5, "ignore_soft_cancel": "yes", "fail_at_step": 0})
            ),
            [
                "params.ignore_soft_cancel",
                "params.ask",
                "params.fail_at_step"
            ]
        );
        assert_eq!(
            bad_fields(json!({"steps": 1, "step_ms": 1, "speed": 2})),
            ["params.speed"]
        );
        assert_eq!(
            bad_fields(json!({"steps": 1, "step_ms": 1, "ask_timeout_ms": 5})),
            ["params.ask_timeout_ms"]
        );
        assert_eq!(
            bad_fields(json!({"steps": 1, "step_ms": 1, "ask": "?", "ask_timeout_ms": 0})),
            ["params.ask_timeout_ms"]
        );
    }
}
