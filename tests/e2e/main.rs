//! End-to-end tests: every semantic of the TaskService over real gRPC against real `reinsd`
//! processes. One module per area; the harness is the `reins_e2e` library.

mod auth;
mod bad_input;
mod budgets;
mod bulk_cancel;
mod cancel;
mod cli;
mod cluster;
mod connections;
mod drain;
mod exec;
mod fairness;
mod faults;
mod limits;
mod list;
mod metrics;
mod proxy;
mod questions;
mod quotas;
mod records;
mod redis_security;
mod replicas;
mod run;
mod server;
mod start;
mod tenants;
mod tls;
mod watch;
mod workers;
