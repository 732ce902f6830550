//! `TaskEvent` with its task encoded once: what the server streams to watchers.
//!
//! Every watcher of a task gets the same version, so the server encodes the version's
//! `Task` once (per view) and every event of it shares those bytes; only the event's own
//! small fields (`time`, `heartbeat`) are encoded per message. [`EncodedTaskEvent`] is a
//! [`prost::Message`] whose encoding is byte for byte that of the [`v1::TaskEvent`] with the
//! same contents, so clients see the public `TaskEvent` unchanged. The server's generated
//! `TaskService` streams it (see `build.rs`); the generated clients decode `TaskEvent`.

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::v1;

/// The protobuf encoding of a [`v1::Task`] (its fields, without a tag or length), shared
/// by cloning (a reference count, no copy).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodedTask(Bytes);

impl EncodedTask {
    pub fn new(task: &v1::Task) -> EncodedTask {
        EncodedTask(task.encode_to_vec().into())
    }
}

/// A `reins.v1.TaskEvent` whose `task` is already encoded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EncodedTaskEvent {
    /// `TaskEvent.task` (field 1).
    pub task: Option<EncodedTask>,
    /// `TaskEvent.time` (field 2).
    pub time: Option<prost_types::Timestamp>,
    /// `TaskEvent.heartbeat` (field 3).
    pub heartbeat: bool,
}

const TASK: u32 = 1;
const TIME: u32 = 2;
const HEARTBEAT: u32 = 3;

impl EncodedTaskEvent {
    /// The event of a change: the task after it, at `time`.
    pub fn new(task: EncodedTask, time: prost_types::Timestamp) -> EncodedTaskEvent {
        EncodedTaskEvent {
            task: Some(task),
            time: Some(time),
            heartbeat: false,
        }
    }

    /// This event again as a heartbeat sent at `time` (see `TaskEvent.heartbeat`).
    pub fn heartbeat(&self, time: prost_types::Timestamp) -> EncodedTaskEvent {
        EncodedTaskEvent {
            task: self.task.clone(),
            time: Some(time),
            heartbeat: true,
        }
    }
}

/// Written in field order with proto3's rules (an unset message or a false bool is left
/// out), as prost writes `TaskEvent`.
impl Message for EncodedTaskEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(task) = &self.task {
            encoding::bytes::encode(TASK, &task.0, buf);
        }
        if let Some(time) = &self.time {
            encoding::message::encode(TIME, time, buf);
        }
        if self.heartbeat {
            encoding::bool::encode(HEARTBEAT, &self.heartbeat, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            TASK => {
                let mut more = Bytes::new();
                encoding::bytes::merge(wire_type, &mut more, buf, ctx)?;
                // A repeated message field merges: the concatenation of two encodings is
                // the encoding of the merged message.
                self.task = Some(EncodedTask(match self.task.take() {
                    Some(EncodedTask(first)) if !first.is_empty() => [first, more].concat().into(),
                    _ => more,
                }));
                Ok(())
            }
            TIME => encoding::message::merge(
                wire_type,
                self.time.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
            HEARTBEAT => encoding::bool::merge(wire_type, &mut self.heartbeat, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        self.task
            .as_ref()
            .map_or(0, |task| encoding::bytes::encoded_len(TASK, &task.0))
            + self
                .time
                .as_ref()
                .map_or(0, |time| encoding::message::encoded_len(TIME, time))
            + if self.heartbeat {
                encoding::bool::encoded_len(HEARTBEAT, &self.heartbeat)
            } else {
                0
            }
    }

    fn clear(&mut self) {
        *self = EncodedTaskEvent::default();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prost_types::Timestamp;

    use super::*;

    fn task() -> v1::Task {
        v1::Task {
            id: "0190b0a4-7c1e-7000-8000-000000000001".into(),
            kind: "sleep".into(),
            state: v1::TaskState::Running as i32,
            params: Some(prost_types::Struct {
                fields: [(
                    "steps".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::NumberValue(5.0)),
                    },
                )]
                .into(),
            }),
            labels: HashMap::from([("team".into(), "a".into())]),
            progress: Some(v1::Progress {
                fraction: 0.5,
                message: "half way".into(),
            }),
            version: 7,
            created_at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 1,
            }),
            ..v1::Task::default()
        }
    }

    const TIME_OF_CHANGE: Timestamp = Timestamp {
        seconds: 1_700_000_123,
        nanos: 456_000,
    };

    fn event(task: v1::Task, time: Timestamp, heartbeat: bool) -> v1::TaskEvent {
        v1::TaskEvent {
            task: Some(task),
            time: Some(time),
            heartbeat,
        }
    }

    #[test]
    fn an_encoded_event_is_the_task_events_encoding() {
        let encoded = EncodedTaskEvent::new(EncodedTask::new(&task()), TIME_OF_CHANGE);
        let bytes = encoded.encode_to_vec();
        assert_eq!(bytes.len(), encoded.encoded_len());
        assert_eq!(bytes, event(task(), TIME_OF_CHANGE, false).encode_to_vec());
        assert_eq!(
            v1::TaskEvent::decode(bytes.as_slice()).unwrap(),
            event(task(), TIME_OF_CHANGE, false)
        );
    }

    #[test]
    fn a_heartbeat_repeats_the_task_at_its_own_time() {
        let encoded = EncodedTaskEvent::new(EncodedTask::new(&task()), TIME_OF_CHANGE);
        let later = Timestamp {
            seconds: TIME_OF_CHANGE.seconds + 15,
            nanos: 0,
        };
        let beat = encoded.heartbeat(later).encode_to_vec();
        assert_eq!(beat, event(task(), later, true).encode_to_vec());
        assert_eq!(beat.len(), encoded.heartbeat(later).encoded_len());
    }

    #[test]
    fn empty_fields_are_left_out_as_prost_leaves_them_out() {
        let empty = EncodedTaskEvent::default();
        assert!(empty.encode_to_vec().is_empty());
        let default_task = EncodedTaskEvent {
            task: Some(EncodedTask::new(&v1::Task::default())),
            ..EncodedTaskEvent::default()
        };
        let expected = v1::TaskEvent {
            task: Some(v1::Task::default()),
            ..v1::TaskEvent::default()
        };
        assert_eq!(default_task.encode_to_vec(), expected.encode_to_vec());
    }

    #[test]
    fn a_task_event_decodes_into_an_encoded_one_and_back() {
        let original = event(task(), TIME_OF_CHANGE, true).encode_to_vec();
        let decoded = EncodedTaskEvent::decode(original.as_slice()).unwrap();
        assert_eq!(decoded.task, Some(EncodedTask::new(&task())));
        assert_eq!(decoded.encode_to_vec(), original);
    }

    #[test]
    fn a_task_sent_in_two_parts_merges_as_protobuf_merges_messages() {
        let first = v1::Task {
            kind: "sleep".into(),
            ..v1::Task::default()
        };
        let second = v1::Task {
            version: 3,
            ..v1::Task::default()
        };
        let mut bytes = event(first, TIME_OF_CHANGE, false).encode_to_vec();
        bytes.extend(event(second, TIME_OF_CHANGE, false).encode_to_vec());
        let decoded = EncodedTaskEvent::decode(bytes.as_slice()).unwrap();
        let task = v1::Task::decode(&decoded.task.unwrap().0[..]).unwrap();
        assert_eq!((task.kind.as_str(), task.version), ("sleep", 3));
    }
}
