//! The `reins.v1` contract: generated message and service types, plus the encoded
//! file descriptor set that the server hands to gRPC reflection.
//!
//! The `.proto` files under `proto/reins/v1/` are compiled once here (with protox, so no
//! system `protoc` is needed) and shared by the server, the Rust client and the tests.

/// Generated code: its shapes follow the protobuf contract, not clippy's taste.
#[allow(clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("reins.v1");
}

/// Every file of the `reins.v1` package and its imports, encoded as a
/// `google.protobuf.FileDescriptorSet`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("reins_descriptor");

pub mod json;
