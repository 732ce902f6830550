//! The gRPC layer: tonic services that validate requests, convert proto ⇄ domain and map
//! domain errors to statuses. No business rule lives here.

pub mod convert;
pub mod status;
mod task_service;
pub mod worker_service;

pub use task_service::TaskApi;
pub use worker_service::WorkerApi;
