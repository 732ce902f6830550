//! The heartbeat program the cancel scenarios run through the `exec` kind: a `python3`
//! loop that overwrites one file with its pid and the current time (ns since the Unix
//! epoch) about every millisecond. The last time written is when the task's code was last
//! alive; its pid tells when the process is gone, so the last beat is final.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use super::{BenchError, BenchResult, process};

/// The program (`client/bench/heartbeat.py`, which the black-box benchmark runs too): one
/// fixed-width record, `pid previous_beat beat`, rewritten in place every millisecond.
const PROGRAM: &str = include_str!("../../bench/heartbeat.py");

/// How often the file is looked at while waiting.
const POLL: Duration = Duration::from_millis(1);
/// How long the program may take to start beating, or to be gone once cancelled.
const PATIENCE: Duration = Duration::from_secs(10);

/// One record of the file; times in nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Beat {
    pub pid: u32,
    pub previous: i128,
    pub at: i128,
}

impl Beat {
    /// When the next beat was due, judging by the last interval: the code stopped
    /// between [`Beat::at`] and about this.
    pub fn next_due(&self) -> i128 {
        self.at + (self.at - self.previous)
    }
}

pub struct Heartbeat {
    path: PathBuf,
}

impl Heartbeat {
    pub fn new(path: PathBuf) -> Heartbeat {
        let _ = std::fs::remove_file(&path);
        Heartbeat { path }
    }

    /// The `exec` params that run the program (`python3` must be on the replica's
    /// `--allow-exec` list).
    pub fn exec_params(&self) -> serde_json::Value {
        // -S: no `site` import, which is most of the interpreter's start on a busy machine.
        json!({ "argv": ["python3", "-S", "-c", PROGRAM, self.path.to_string_lossy()] })
    }

    fn read(&self) -> Option<Beat> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let mut fields = text.split_whitespace();
        let beat = Beat {
            pid: fields.next()?.parse().ok()?,
            previous: fields.next()?.parse().ok()?,
            at: fields.next()?.parse().ok()?,
        };
        fields.next().is_none().then_some(beat)
    }

    /// Waits for two beats in a row: the loop is running.
    pub async fn wait_beating(&self) -> BenchResult<Beat> {
        let mut first = None;
        self.poll("start beating", || {
            let beat = self.read()?;
            match first {
                Some(earlier) if beat != earlier => Some(beat),
                _ => {
                    first = Some(beat);
                    None
                }
            }
        })
        .await
    }

    /// Waits for the process to be gone and returns its last beat.
    pub async fn wait_stopped(&self, pid: u32) -> BenchResult<Beat> {
        self.poll("stop", || {
            if process::has_exited(pid) {
                self.read()
            } else {
                None
            }
        })
        .await
    }

    async fn poll(&self, what: &str, mut done: impl FnMut() -> Option<Beat>) -> BenchResult<Beat> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(beat) = done() {
                return Ok(beat);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BenchError::Unexpected(format!(
                    "the heartbeat {} did not {what} within {PATIENCE:?}",
                    self.path.display()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
