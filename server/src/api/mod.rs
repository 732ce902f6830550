//! The gRPC layer: tonic services that validate requests, convert proto ⇄ domain and map
//! domain errors to statuses. No business rule lives here.

mod pacing;
pub(crate) mod request;
pub(crate) mod status;
mod task_service;
mod ties;
mod watch_stream;
pub(crate) mod worker_service;

pub(crate) use task_service::TaskApi;
pub(crate) use worker_service::WorkerApi;
