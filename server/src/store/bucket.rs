//! The token bucket of a tenant's `max_starts_per_second` and `burst`: `burst` tokens at
//! most, refilled at `per_second`; a start takes one. Written once here for the embedded
//! store; `redis/bucket.lua` is the same arithmetic in one atomic script, on the Redis
//! server's clock, so that the rate holds across replicas.

use std::time::Duration;

/// A bucket's state: tokens left at a time (milliseconds on some clock).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Bucket {
    pub tokens: f64,
    pub at_ms: u64,
}

impl Bucket {
    /// A full bucket at `now_ms`.
    pub fn full(burst: u64, now_ms: u64) -> Bucket {
        Bucket {
            tokens: burst.max(1) as f64,
            at_ms: now_ms,
        }
    }

    /// Takes a token at `now_ms`: `Ok` if there was one, otherwise how long until there
    /// is. A clock that went back refills nothing.
    pub fn take(&mut self, now_ms: u64, per_second: f64, burst: u64) -> Result<(), Duration> {
        let burst = burst.max(1) as f64;
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * per_second).min(burst);
        self.at_ms = self.at_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / per_second;
        Err(Duration::from_secs_f64(wait.min(3600.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_then_a_wait_until_the_next_token() {
        let mut bucket = Bucket::full(3, 0);
        for _ in 0..3 {
            assert!(bucket.take(0, 2.0, 3).is_ok());
        }
        let wait = bucket.take(0, 2.0, 3).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(bucket.take(499, 2.0, 3).is_err());
        assert!(bucket.take(500, 2.0, 3).is_ok(), "one token after 1/rate");
        // Idle for long: refilled to the burst, no more.
        for _ in 0..3 {
            assert!(bucket.take(100_000, 2.0, 3).is_ok());
        }
        assert!(bucket.take(100_000, 2.0, 3).is_err());
        // A clock going back refills nothing.
        assert!(bucket.take(50_000, 2.0, 3).is_err());
    }
}
