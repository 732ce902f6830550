//! Retries of idempotent calls on UNAVAILABLE, as `deploy/grpc-service-config.json` says.
//!
//! gRPC clients in other languages read that file as their channel's service config and
//! retry by themselves; tonic has no service-config support, so [`Client`](crate::Client)
//! does the same here, from the same file (embedded at build time): which methods, how many
//! attempts, the exponential backoff with full jitter between them, and the retryable codes.
//! It also retries a request the connection refused before sending it (a GOAWAY crossed
//! it: tonic reports CANCELLED "connection closed"), which gRPC does transparently for any
//! method.
//!
//! StartTask is idempotent only when it carries a `request_id` (the server returns the
//! task it already started for that id): the client retries it only then. Streams are
//! retried only until their first response (a watch that fails later is resumed by the
//! caller with `after_version`). The retry-throttling section is not applied: each call's
//! attempts are bounded by `maxAttempts`.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::Value;
use tonic::{Code, Status};

/// The shipped service config.
pub const SERVICE_CONFIG: &str = include_str!("../../deploy/grpc-service-config.json");

/// The retry policy of a set of methods.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: usize,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub backoff_multiplier: f32,
    pub retryable: Vec<Code>,
}

/// The methods of `reins.v1.TaskService` a policy applies to, with the policy.
#[derive(Clone, Debug, Default)]
pub struct ServiceConfig {
    policies: Vec<(Vec<String>, RetryPolicy)>,
}

impl ServiceConfig {
    /// Parses a gRPC service config (only `methodConfig[].name` and `.retryPolicy` are read).
    pub fn parse(text: &str) -> Result<ServiceConfig, String> {
        let config: Value = serde_json::from_str(text).map_err(|err| err.to_string())?;
        let mut policies = Vec::new();
        for method_config in config["methodConfig"].as_array().into_iter().flatten() {
            let Some(policy) = method_config.get("retryPolicy") else {
                continue;
            };
            let methods = method_config["name"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|name| name["service"] == "reins.v1.TaskService")
                .filter_map(|name| name["method"].as_str().map(str::to_owned))
                .collect();
            policies.push((methods, retry_policy(policy)?));
        }
        Ok(ServiceConfig { policies })
    }

    /// The shipped config, parsed once.
    pub fn shipped() -> &'static ServiceConfig {
        static SHIPPED: OnceLock<ServiceConfig> = OnceLock::new();
        SHIPPED.get_or_init(|| {
            ServiceConfig::parse(SERVICE_CONFIG).expect("deploy/grpc-service-config.json parses")
        })
    }

    /// The policy of `method` (e.g. `"CheckTask"`), if it is retried.
    pub fn policy(&self, method: &str) -> Option<&RetryPolicy> {
        self.policies
            .iter()
            .find(|(methods, _)| methods.iter().any(|m| m == method))
            .map(|(_, policy)| policy)
    }
}

fn retry_policy(policy: &Value) -> Result<RetryPolicy, String> {
    let seconds = |field: &str| -> Result<Duration, String> {
        let text = policy[field]
            .as_str()
            .and_then(|text| text.strip_suffix('s'))
            .ok_or_else(|| format!("retryPolicy.{field}: a duration such as \"0.1s\""))?;
        text.parse::<f64>()
            .ok()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .ok_or_else(|| format!("retryPolicy.{field}: not a duration: {text}"))
    };
    let retryable = policy["retryableStatusCodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|code| match code.as_str() {
            Some("UNAVAILABLE") => Ok(Code::Unavailable),
            Some("RESOURCE_EXHAUSTED") => Ok(Code::ResourceExhausted),
            Some("ABORTED") => Ok(Code::Aborted),
            Some("DEADLINE_EXCEEDED") => Ok(Code::DeadlineExceeded),
            other => Err(format!("retryableStatusCodes: unsupported {other:?}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RetryPolicy {
        max_attempts: policy["maxAttempts"].as_u64().unwrap_or(1).clamp(1, 5) as usize,
        initial_backoff: seconds("initialBackoff")?,
        max_backoff: seconds("maxBackoff")?,
        backoff_multiplier: policy["backoffMultiplier"].as_f64().unwrap_or(1.0) as f32,
        retryable,
    })
}

/// Whether the connection refused the request before sending it (a GOAWAY crossed it),
/// which makes it safe to send again whatever the method.
fn never_sent(status: &Status) -> bool {
    if status.code() != Code::Cancelled {
        return false;
    }
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        source = error.source();
    }
    false
}

/// The backoff of a request that was never sent, for methods without a policy: it is safe
/// to send again whatever the method (gRPC's transparent retry).
static NEVER_SENT: RetryPolicy = RetryPolicy {
    max_attempts: 5,
    initial_backoff: Duration::from_millis(50),
    max_backoff: Duration::from_secs(1),
    backoff_multiplier: 2.0,
    retryable: Vec::new(),
};

/// Runs `call` until it succeeds, fails with a code `policy` does not retry, or runs out
/// of attempts; waits the policy's jittered backoff between attempts. A request that was
/// never sent (a GOAWAY crossed it; the connection it was queued on drains its other
/// streams before it closes) is sent again whatever the method, within the same bounds
/// (or [`NEVER_SENT`]'s without a policy).
pub async fn with_retries<T, F, Fut>(policy: Option<&RetryPolicy>, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let bounds = policy.unwrap_or(&NEVER_SENT);
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(bounds.initial_backoff)
        .with_max_delay(bounds.max_backoff)
        .with_factor(bounds.backoff_multiplier)
        .with_max_times(bounds.max_attempts - 1)
        .with_jitter()
        .build();
    loop {
        let status = match call().await {
            Ok(value) => return Ok(value),
            Err(status) => status,
        };
        let retryable = never_sent(&status) || bounds.retryable.contains(&status.code());
        match delays.next() {
            Some(delay) if retryable => tokio::time::sleep(delay).await,
            _ => return Err(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn the_shipped_config_retries_the_idempotent_methods_on_unavailable() {
        let config = ServiceConfig::shipped();
        for method in [
            "CheckTask",
            "ListActive",
            "WatchTask",
            "SoftCancel",
            "HardCancel",
            "StartTask",
        ] {
            let policy = config
                .policy(method)
                .unwrap_or_else(|| panic!("{method} is retried"));
            assert_eq!(policy.retryable, [Code::Unavailable]);
            assert_eq!(policy.max_attempts, 5);
        }
        assert_eq!(
            config.policy("AnswerTask"),
            None,
            "an answer is not idempotent"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_is_retried_on_unavailable_up_to_max_attempts_only() {
        let policy = ServiceConfig::shipped().policy("CheckTask").unwrap();
        let calls = AtomicUsize::new(0);
        let result: Result<(), Status> = with_retries(Some(policy), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Status::unavailable("draining"))
        })
        .await;
        assert_eq!(result.unwrap_err().code(), Code::Unavailable);
        assert_eq!(calls.load(Ordering::SeqCst), policy.max_attempts);

        let calls = AtomicUsize::new(0);
        let result = with_retries(Some(policy), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(Status::unavailable("draining")),
                _ => Ok("answered"),
            }
        })
        .await;
        assert_eq!(result.unwrap(), "answered");

        let calls = AtomicUsize::new(0);
        let result: Result<(), Status> = with_retries(Some(policy), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Status::not_found("no such task"))
        })
        .await;
        assert_eq!(result.unwrap_err().code(), Code::NotFound);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "only UNAVAILABLE is retried"
        );
    }

    #[test]
    fn a_bad_config_is_refused_with_the_field_named() {
        let bad = r#"{"methodConfig": [{"name": [{"service": "reins.v1.TaskService", "method": "CheckTask"}],
            "retryPolicy": {"maxAttempts": 3, "initialBackoff": "soon", "maxBackoff": "1s",
            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#;
        let err = ServiceConfig::parse(bad).unwrap_err();
        assert!(err.contains("initialBackoff"), "{err}");
    }
}
