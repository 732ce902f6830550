//! A typed Rust client for the Reins task-control service (`reins.v1.TaskService`).
//!
//! [`Client`] wraps the generated tonic stub with one method per RPC and plain Rust types
//! (`std::time::Duration`, `serde_json::Value`) where the protocol uses well-known types.
//! [`json`] and [`duration`] hold those conversions, [`describe_status`] turns an RPC error
//! into one readable line. Calls carry the caller's OpenTelemetry context
//! ([`propagation`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), reins_client::Error> {
//! use reins_client::{Client, StartTask};
//! use serde_json::json;
//!
//! let client = Client::connect("127.0.0.1:50051").await?;
//! let task = client.start(StartTask::new("sleep").params(json!({ "ms": 200 }))).await?;
//! println!("started {}", task.id);
//! # Ok(())
//! # }
//! ```

mod client;
mod credentials;
pub mod duration;
mod error;
pub mod propagation;
pub mod retry;

pub use client::{CONNECT_TIMEOUT, Client, StartTask, Stub, WatchOptions, connect_channel};
pub use credentials::{BearerToken, Credentials};
pub use error::{Error, describe_status};
/// JSON ⇄ `google.protobuf.Value`/`Struct`, shared with the server.
pub use reins_proto::json;
/// The generated `reins.v1` types, re-exported so callers need no direct `reins-proto` dependency.
pub use reins_proto::v1 as proto;
pub use retry::ServiceConfig;
