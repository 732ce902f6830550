//! The `reins.v1` contract: generated message and service types, plus the encoded
//! file descriptor set that the server hands to gRPC reflection.
//!
//! The `.proto` files under `proto/reins/v1/` are compiled once here (with protox, so no
//! system `protoc` is needed) and shared by the server, the Rust client and the tests.

/// Generated code: its shapes follow the protobuf contract, not clippy's taste.
#[allow(clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("reins.v1");
    // The servers (`*_server`), whose TaskEvent streams are `encoded::EncodedTaskEvent`.
    include!(concat!(env!("OUT_DIR"), "/servers/reins.v1.rs"));

    impl TaskState {
        /// COMPLETED, FAILED and CANCELLED: states a task never leaves (the first terminal
        /// transition wins). UNSPECIFIED, which is also what an unknown value decodes to,
        /// is not terminal.
        pub fn is_terminal(self) -> bool {
            matches!(
                self,
                TaskState::Completed | TaskState::Failed | TaskState::Cancelled
            )
        }
    }
}

/// Every file of the `reins.v1` package and its imports, encoded as a
/// `google.protobuf.FileDescriptorSet`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("reins_descriptor");

pub mod codec;
pub mod encoded;
pub mod json;

#[cfg(test)]
mod tests {
    use super::v1::{Task, TaskState};

    #[test]
    fn only_completed_failed_and_cancelled_are_terminal() {
        let all = [
            TaskState::Unspecified,
            TaskState::Pending,
            TaskState::Running,
            TaskState::WaitingForAnswer,
            TaskState::Completed,
            TaskState::Failed,
            TaskState::Cancelled,
        ];
        let terminal: Vec<TaskState> = all
            .into_iter()
            .filter(|state| state.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                TaskState::Completed,
                TaskState::Failed,
                TaskState::Cancelled
            ]
        );
    }

    #[test]
    fn a_state_this_build_does_not_know_is_not_terminal() {
        let task = Task {
            state: 42,
            ..Task::default()
        };
        assert!(TaskState::try_from(task.state).is_err());
        assert!(!task.state().is_terminal());
    }
}
