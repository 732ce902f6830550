//! What `reinsd` tells operators about itself, one concern per module.

pub mod metrics;
