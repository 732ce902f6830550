//! Telemetry: what the server tells operators about itself, one concern per module.
//!
//! - [`traces`]: OpenTelemetry traces (OTLP/gRPC export, W3C Trace Context in and out, the
//!   per-RPC server span, the span of a task's execution).
//! - [`metrics`]: Prometheus metrics (the registry, the gRPC server metrics layer, the
//!   `/metrics`, `/healthz` and `/readyz` endpoints).

pub mod metrics;
pub mod traces;
