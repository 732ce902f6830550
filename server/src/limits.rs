//! Limits that bound what one client or one worker can put into a task record: how many
//! labels, how long each text, how large and how deep each structured value. This module
//! owns the flags (`--max-…`, flattened into `Config`), the checks, and the arithmetic
//! that proves a record at every limit still fits in one gRPC message (`--max-message-size`),
//! refused at startup when it does not.
//!
//! Texts are measured in bytes of UTF-8. Structured values (params, results) are measured
//! as the bytes of their protobuf encoding (`google.protobuf.Struct` / `Value`), which is
//! what travels and what the message size limit counts: for text it is within a few bytes
//! of the compact JSON, but a long list of small numbers is up to 5.5 times its JSON.
//!
//! Where the checks run: client requests in `api::request` (INVALID_ARGUMENT, a
//! `BadRequest` violation per field naming the limit and its flag); a worker's `hello` in
//! `api::worker_service`; and every report of a task's running code — built-in kinds and
//! workers alike — in the engine's `TaskPort`, where a report over a limit is not stored:
//! the task ends FAILED with an error naming the limit instead, and the code is stopped
//! (a worker still running it gets `abort`; its stream and its other tasks go on).

use crate::error::{Echo, Error, FieldViolation, Result};
use crate::task::state_machine::Report;
use crate::task::{Json, JsonMap, NewTask, budget};

/// The longest tenant name (auth config, JWT claim).
pub(crate) const MAX_TENANT_BYTES: usize = 128;
/// The longest principal name (auth config, a JWT's `sub`), recorded in `created_by` and
/// `requested_by` (which may also hold a replica id, of at most `--max-id-bytes`… no more
/// than this by default).
pub(crate) const MAX_PRINCIPAL_BYTES: usize = 253;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// The flags, one per limit. Every default is in the README's Limits row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Args)]
pub struct Limits {
    /// Labels per task.
    #[arg(long, env = "REINS_MAX_LABELS", default_value_t = 64)]
    pub max_labels: usize,

    /// Bytes of a label key.
    #[arg(long, env = "REINS_MAX_LABEL_KEY_BYTES", default_value_t = 128)]
    pub max_label_key_bytes: usize,

    /// Bytes of a label value.
    #[arg(long, env = "REINS_MAX_LABEL_VALUE_BYTES", default_value_t = KIB)]
    pub max_label_value_bytes: usize,

    /// Bytes of an identifier: a task's `kind`, `session_id` and `request_id`, a worker's
    /// name and the kinds it serves, and this replica's id.
    #[arg(long, env = "REINS_MAX_ID_BYTES", default_value_t = 256)]
    pub max_id_bytes: usize,

    /// Bytes of a task's description.
    #[arg(long, env = "REINS_MAX_DESCRIPTION_BYTES", default_value_t = 4 * KIB)]
    pub max_description_bytes: usize,

    /// Bytes of a task's params (their protobuf encoding).
    #[arg(long, env = "REINS_MAX_PARAMS_BYTES", default_value_t = MIB)]
    pub max_params_bytes: usize,

    /// Nesting levels of a task's params (the params object is level 1).
    #[arg(long, env = "REINS_MAX_PARAMS_DEPTH", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=40))]
    pub max_params_depth: u32,

    /// Bytes of a task's result (its protobuf encoding).
    #[arg(long, env = "REINS_MAX_RESULT_BYTES", default_value_t = MIB)]
    pub max_result_bytes: usize,

    /// Bytes of a task's error message.
    #[arg(long, env = "REINS_MAX_ERROR_BYTES", default_value_t = 16 * KIB)]
    pub max_error_bytes: usize,

    /// Bytes of a question a task asks.
    #[arg(long, env = "REINS_MAX_QUESTION_BYTES", default_value_t = 64 * KIB)]
    pub max_question_bytes: usize,

    /// Bytes of an answer (AnswerTask).
    #[arg(long, env = "REINS_MAX_ANSWER_BYTES", default_value_t = 64 * KIB)]
    pub max_answer_bytes: usize,

    /// Bytes of a progress message.
    #[arg(long, env = "REINS_MAX_PROGRESS_MESSAGE_BYTES", default_value_t = 4 * KIB)]
    pub max_progress_message_bytes: usize,

    /// Bytes of a cancel reason (SoftCancel, HardCancel).
    #[arg(long, env = "REINS_MAX_REASON_BYTES", default_value_t = KIB)]
    pub max_reason_bytes: usize,
}

/// How many checkpoints a record holds and how many bytes they take at most (measured like
/// results, with [`wire_len`]); the checkpoint limits of bounded task records
/// (`--max-checkpoints`, `--max-checkpoint-bytes`).
#[derive(Clone, Copy, Debug)]
pub struct CheckpointBudget {
    pub count: usize,
    pub bytes: usize,
}

/// The defaults of `--max-checkpoints` and `--max-checkpoint-bytes`.
#[cfg(test)]
pub const CHECKPOINT_BUDGET: CheckpointBudget = CheckpointBudget {
    count: 1000,
    bytes: MIB,
};

/// Everything in a record (and in the message that carries it: a `TaskEvent`, a
/// `CancelResponse`, a worker's `TaskAssignment`) that no limit covers: the id, parent id,
/// state, timestamps, version, counters, cancel flags, every field's tag and length, and
/// the server's own texts (an error such as "worker … was lost", the prefix of an
/// inherited cancel reason). Generous: `record_bound`'s test measures the real thing.
const RECORD_OVERHEAD: usize = 4 * KIB;

/// Length prefix and tag of one element of a repeated or map field, at most.
const ELEMENT_OVERHEAD: usize = 8;

/// `size` bytes over `limit` (named by `flag`)? Then what to say about it.
fn over(size: usize, limit: usize, flag: &str) -> Option<String> {
    (size > limit).then(|| format!("{size} bytes; at most {limit} ({flag})"))
}

/// The same, about a report: the error the task fails with.
fn report_over(what: &str, size: usize, limit: usize, flag: &str) -> Option<String> {
    over(size, limit, flag).map(|why| format!("{what} is {why}"))
}

impl Limits {
    /// Every limit a StartTask breaks, one violation per field.
    pub fn new_task(&self, spec: &NewTask) -> Vec<FieldViolation> {
        let mut violations = Vec::new();
        let mut text = |field: &str, value: &str, limit: usize, flag: &str| {
            if let Some(why) = over(value.len(), limit, flag) {
                violations.push(FieldViolation::new(field, why));
            }
        };
        text("kind", &spec.kind, self.max_id_bytes, "--max-id-bytes");
        text(
            "session_id",
            &spec.session_id,
            self.max_id_bytes,
            "--max-id-bytes",
        );
        text(
            "request_id",
            &spec.request_id,
            self.max_id_bytes,
            "--max-id-bytes",
        );
        text(
            "description",
            &spec.description,
            self.max_description_bytes,
            "--max-description-bytes",
        );
        violations.extend(self.params(&spec.params));
        violations.extend(self.labels(&spec.labels));
        violations
    }

    fn params(&self, params: &JsonMap) -> Option<FieldViolation> {
        let depth = object_depth(params);
        if depth > self.max_params_depth as usize {
            return Some(FieldViolation::new(
                "params",
                format!(
                    "nested {depth} levels deep; at most {} (--max-params-depth)",
                    self.max_params_depth
                ),
            ));
        }
        let size = object_wire_len(params);
        over(size, self.max_params_bytes, "--max-params-bytes")
            .map(|why| FieldViolation::new("params", why))
    }

    fn labels(&self, labels: &std::collections::BTreeMap<String, String>) -> Vec<FieldViolation> {
        let mut violations = Vec::new();
        if labels.len() > self.max_labels {
            violations.push(FieldViolation::new(
                "labels",
                format!(
                    "{} labels; at most {} (--max-labels)",
                    labels.len(),
                    self.max_labels
                ),
            ));
        }
        for (key, value) in labels {
            if let Some(why) = over(key.len(), self.max_label_key_bytes, "--max-label-key-bytes") {
                let why = format!("key {}: {why}", Echo(key));
                violations.push(FieldViolation::new("labels", why));
            } else if let Some(why) = over(
                value.len(),
                self.max_label_value_bytes,
                "--max-label-value-bytes",
            ) {
                violations.push(FieldViolation::new(format!("labels.{key}"), why));
            }
        }
        violations
    }

    /// An AnswerTask's answer.
    pub fn answer(&self, answer: &str) -> Result<()> {
        field(
            "answer",
            answer,
            self.max_answer_bytes,
            "--max-answer-bytes",
        )
    }

    /// A cancel's reason.
    pub fn reason(&self, reason: &str) -> Result<()> {
        field(
            "reason",
            reason,
            self.max_reason_bytes,
            "--max-reason-bytes",
        )
    }

    /// A worker's `hello`: its name (recorded on its tasks) and the kinds it serves.
    pub fn hello(&self, name: &str, kinds: &[String]) -> Result<()> {
        field("hello.name", name, self.max_id_bytes, "--max-id-bytes")?;
        kinds
            .iter()
            .try_for_each(|kind| field("hello.kinds", kind, self.max_id_bytes, "--max-id-bytes"))
    }

    /// Why a report of a task's running code may not be stored, if it breaks a limit: the
    /// error the task fails with instead. Checkpoints (`partial_result`) are bounded by
    /// the checkpoint limits.
    pub fn report_violation(&self, report: &Report) -> Option<String> {
        let result = |result: &Json| {
            report_over(
                "the task's result",
                wire_len(result),
                self.max_result_bytes,
                "--max-result-bytes",
            )
        };
        match report {
            Report::Progress { message, .. } => report_over(
                "the task's progress message",
                message.len(),
                self.max_progress_message_bytes,
                "--max-progress-message-bytes",
            ),
            Report::Ask { question, .. } => report_over(
                "the task's question",
                question.len(),
                self.max_question_bytes,
                "--max-question-bytes",
            ),
            Report::Complete { result: value } | Report::Stopped { result: value } => result(value),
            Report::Fail {
                error,
                result: value,
            } => report_over(
                "the task's error",
                error.len(),
                self.max_error_bytes,
                "--max-error-bytes",
            )
            .map(|why| format!("{why}; it began {}", Echo(error)))
            .or_else(|| value.as_ref().and_then(result)),
            // Written by the server itself (a worker or replica was lost).
            Report::Lost { .. } => None,
        }
    }

    /// The most bytes one task record can take on the wire, in any message that carries
    /// it, when every field is at its limit.
    pub fn record_bound(&self, checkpoints: CheckpointBudget) -> usize {
        let text = |limit: usize| limit + ELEMENT_OVERHEAD;
        // kind, session_id, request_id, the worker's name (in `worker`) and the owner.
        5 * text(self.max_id_bytes)
            + text(self.max_description_bytes)
            + text(self.max_params_bytes)
            + self.max_labels * (text(self.max_label_key_bytes) + text(self.max_label_value_bytes))
            + text(self.max_progress_message_bytes)
            + text(self.max_question_bytes)
            + text(self.max_answer_bytes)
            + text(self.max_result_bytes)
            + text(self.max_error_bytes)
            + text(self.max_reason_bytes)
            // The tenant, `created_by` and `CancelInfo.requested_by`.
            + text(MAX_TENANT_BYTES)
            + 2 * text(MAX_PRINCIPAL_BYTES)
            + checkpoints.bytes
            + checkpoints.count * ELEMENT_OVERHEAD
            // budget, usage and subtree_usage: at most 16 dimensions each (a name, a double).
            + 3 * budget::MAX_DIMENSIONS
                * (text(budget::MAX_DIMENSION_CHARS) + 9 + ELEMENT_OVERHEAD)
            + RECORD_OVERHEAD
    }

    /// Startup check: a record at every limit fits in one message, and this replica's id
    /// (recorded as the owner of its tasks) is an identifier like the others.
    pub fn check_fits(
        &self,
        max_message_size: usize,
        checkpoints: CheckpointBudget,
        replica_id: &str,
    ) -> Result<(), String> {
        let bound = self.record_bound(checkpoints);
        if bound > max_message_size {
            return Err(format!(
                "a task record at these limits can take {bound} bytes, more than \
                 --max-message-size ({max_message_size}): lower --max-params-bytes, \
                 --max-result-bytes or the checkpoint limits, or raise --max-message-size"
            ));
        }
        if replica_id.len() > self.max_id_bytes {
            return Err(format!(
                "the replica id is {} bytes; at most {} (--max-id-bytes)",
                replica_id.len(),
                self.max_id_bytes
            ));
        }
        Ok(())
    }
}

fn field(name: &str, value: &str, limit: usize, flag: &str) -> Result<()> {
    match over(value.len(), limit, flag) {
        Some(why) => Err(Error::invalid(name, why)),
        None => Ok(()),
    }
}

/// Bytes of a varint.
fn varint_len(n: usize) -> usize {
    let bits = usize::BITS - (n | 1).leading_zeros();
    bits.div_ceil(7) as usize
}

/// A length-delimited field: tag (field numbers below 16: one byte), length, content.
fn delimited(content: usize) -> usize {
    1 + varint_len(content) + content
}

/// Bytes of `value`'s protobuf encoding as a `google.protobuf.Value` (the message's
/// content, without the tag and length of the field holding it).
pub fn wire_len(value: &Json) -> usize {
    match value {
        // An enum or bool in a oneof: tag + one varint byte.
        Json::Null | Json::Bool(_) => 2,
        // A double: tag + 8 bytes.
        Json::Number(_) => 9,
        Json::String(text) => delimited(text.len()),
        Json::Array(items) => delimited(items.iter().map(|item| delimited(wire_len(item))).sum()),
        Json::Object(object) => delimited(object_wire_len(object)),
    }
}

/// Bytes of `object`'s protobuf encoding as a `google.protobuf.Struct`: one map entry per
/// field (an empty key, being the default, is left out of its entry).
pub fn object_wire_len(object: &JsonMap) -> usize {
    object
        .iter()
        .map(|(key, value)| {
            let key = if key.is_empty() {
                0
            } else {
                delimited(key.len())
            };
            delimited(key + delimited(wire_len(value)))
        })
        .sum()
}

/// Nesting levels of an object: `{}` is 1, `{"a": [1]}` is 2.
fn object_depth(object: &JsonMap) -> usize {
    1 + object.values().map(depth).max().unwrap_or(0)
}

fn depth(value: &Json) -> usize {
    match value {
        Json::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Json::Object(object) => object_depth(object),
        _ => 0,
    }
}

#[cfg(test)]
pub(crate) mod tests;
