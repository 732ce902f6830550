//! Canonical proto3 JSON for `--json`. The generated prost types carry no JSON mapping, so
//! each response is re-read as a `DynamicMessage` described by the compiled-in descriptor
//! set, whose serde implementation follows the proto3 JSON rules (camelCase names, enum
//! names, RFC 3339 timestamps, `"1.5s"` durations, defaults omitted).

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage};
use reins_client::proto::{
    CancelResponse, CancelTasksResponse, ListActiveResponse, Task, TaskEvent,
};

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(reins_proto::FILE_DESCRIPTOR_SET)
        .expect("reins-proto embeds a valid descriptor set")
});

/// A generated message type and its fully-qualified protobuf name.
pub trait ProtoMessage: prost::Message {
    const FULL_NAME: &'static str;
}

impl ProtoMessage for Task {
    const FULL_NAME: &'static str = "reins.v1.Task";
}

impl ProtoMessage for TaskEvent {
    const FULL_NAME: &'static str = "reins.v1.TaskEvent";
}

impl ProtoMessage for CancelResponse {
    const FULL_NAME: &'static str = "reins.v1.CancelResponse";
}

impl ProtoMessage for CancelTasksResponse {
    const FULL_NAME: &'static str = "reins.v1.CancelTasksResponse";
}

impl ProtoMessage for ListActiveResponse {
    const FULL_NAME: &'static str = "reins.v1.ListActiveResponse";
}

/// The message as one line of canonical proto3 JSON. Fails only for values proto3 JSON
/// cannot express, such as a timestamp outside years 1 to 9999.
pub fn to_json<M: ProtoMessage>(message: &M) -> Result<String, serde_json::Error> {
    let descriptor = POOL
        .get_message_by_name(M::FULL_NAME)
        .unwrap_or_else(|| panic!("{} is missing from the descriptor set", M::FULL_NAME));
    // Same schema on both sides, so decoding our own encoding cannot fail.
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .expect("a message decodes with its own descriptor");
    serde_json::to_string(&dynamic)
}

#[cfg(test)]
mod tests {
    use reins_client::proto::{Progress, TaskState};
    use serde_json::{Value, json};

    use super::*;

    fn parsed<M: ProtoMessage>(message: &M) -> Value {
        serde_json::from_str(&to_json(message).unwrap()).unwrap()
    }

    #[test]
    fn task_uses_proto3_json_conventions() {
        let task = Task {
            id: "t1".into(),
            state: TaskState::WaitingForAnswer.into(),
            version: 7,
            progress: Some(Progress {
                fraction: 0.5,
                message: String::new(),
            }),
            timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            created_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            result: Some(reins_client::json::json_to_value(&json!({"n": [1, "x"]}))),
            ..Task::default()
        };
        assert_eq!(
            parsed(&task),
            json!({
                "id": "t1",
                "state": "TASK_STATE_WAITING_FOR_ANSWER",
                // uint64 is a string in proto3 JSON.
                "version": "7",
                "progress": {"fraction": 0.5},
                "timeout": "1.500s",
                "createdAt": "1970-01-01T00:00:00Z",
                "result": {"n": [1.0, "x"]},
            })
        );
    }

    #[test]
    fn every_printed_message_is_in_the_descriptor_set() {
        // Guards the hand-written FULL_NAMEs against typos and renames in the proto.
        assert_eq!(parsed(&TaskEvent::default()), json!({}));
        assert_eq!(parsed(&CancelResponse::default()), json!({}));
        assert_eq!(parsed(&ListActiveResponse::default()), json!({}));
        assert_eq!(parsed(&Task::default()), json!({}));
    }
}
