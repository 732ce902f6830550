//! Reins server library: the task-control engine behind `reinsd`.
//!
//! - [`task`]: the task record, the state machine and the cancel rules (pure).
//! - [`store`]: persistence behind one trait (embedded memory store, Redis).
//! - [`engine`]: commands → events → atomic writes, subtree cancels, dispatch.
//! - [`supervisor`]: the tasks this replica runs, one driver each.
//! - [`cluster`]: lease, control channel, queue and reaper: one replica among many.
//! - [`executor`]: the built-in kinds (`sleep`, `exec`).
//! - [`api`]: the gRPC services.
//! - [`server`]: assembly, health, reflection and graceful shutdown.

pub mod api;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod error;
pub mod executor;
pub mod server;
pub mod store;
pub mod supervisor;
pub mod task;
