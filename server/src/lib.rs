//! Reins server library: the task-control engine behind `reinsd`. The binary needs only
//! [`config`] and [`server`]; everything else is internal, one concern per module (see
//! `docs/architecture.md`):
//!
//! - `task`: the task record, the state machine and the cancel rules (pure).
//! - `store`: persistence, split by concern (records, feeds, queue, membership, worker
//!   kinds), in memory and in Redis.
//! - `engine`: commands → events → atomic writes; subtree cancels, dispatch, watch, drain.
//! - `port`: the narrow interface through which running code reads and reports.
//! - `supervisor`: the tasks this replica runs, one driver each.
//! - `executor`: the built-in kinds (`sleep`, `exec`) and remote workers.
//! - `cluster`: lease, control channel, queue wake-ups and reaper: one replica among many.
//! - `background`: the owner of every background loop, waited for at shutdown.
//! - `convert`: domain → protobuf, shared by the api and the remote executor.
//! - `limits`: the limits that bound one client or worker, and the record-size arithmetic.
//! - `api`: the gRPC services.
//! - `auth`: who is calling (tokens, JWTs, client certificates), roles, the caller's tenant.
//! - `listener`: the accept loop and the limits on connections; `open_files`: the
//!   process's open-files limit, raised at start-up.
//! - `telemetry`: what the process tells operators (Prometheus metrics, `telemetry::metrics`);
//!   `readiness`: whether this replica can serve now (gRPC health and `/readyz`).
//! - `tls`: the server's TLS configuration (reloaded by `reload`) and client identities.
//! - [`server`]: assembly, health, reflection and graceful shutdown.
//! - [`telemetry`]: traces (OpenTelemetry), set up by the binary.

mod api;
mod auth;
mod background;
mod cluster;
pub mod config;
mod convert;
mod engine;
mod error;
mod executor;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod limits;
mod listener;
mod open_files;
mod port;
mod readiness;
mod reload;
pub mod server;
mod store;
mod supervisor;
mod task;
pub mod telemetry;
mod tls;

/// The exec kind's per-task subreaper: `reinsd` re-executes itself in that mode
/// (`executor/exec/subreaper.rs`), and `main` hands over to it before anything else.
pub use executor::exec::subreaper::run_if_invoked as run_exec_subreaper_if_invoked;
