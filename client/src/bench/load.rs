//! The closed-loop driver of the timed scenarios: a fixed number of workers, each issuing
//! its next operation as soon as the previous one finished, for a duration or a count,
//! after an unrecorded warm-up.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::BenchResult;
use super::report::Row;

/// How much a timed scenario measures.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub duration: Duration,
    /// Measure this many operations instead of `duration`.
    pub count: Option<u64>,
    /// Operations begun before this much time has passed are not recorded.
    pub warmup: Duration,
}

/// What the workers recorded.
pub struct Samples<S> {
    pub samples: Vec<S>,
    pub errors: u64,
    /// From the end of the warm-up to the last recorded operation's end.
    pub elapsed: Duration,
}

impl<S> Samples<S> {
    /// Recorded operations per second.
    pub fn rate(&self) -> f64 {
        self.samples.len() as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// A table row of one latency of each sample, with the errors and the rate.
    pub fn row(&self, scenario: &str, metric: &str, latency: impl Fn(&S) -> Duration) -> Row {
        Row::new(scenario, metric, self.samples.iter().map(latency).collect())
            .errors(self.errors)
            .rate(self.rate())
    }
}

/// Runs `op` (given the operation's sequence number) from `workers` concurrent loops.
/// Failed operations are counted; the first few are printed on stderr.
pub async fn closed_loop<S, F, Fut>(workers: usize, load: Load, op: F) -> Samples<S>
where
    S: Send + 'static,
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = BenchResult<S>> + Send + 'static,
{
    const ERRORS_SHOWN: u64 = 5;
    let op = Arc::new(op);
    let began = Instant::now();
    let measure_from = began + load.warmup;
    let deadline = load.count.map_or(measure_from + load.duration, |_| {
        // Counted runs stop on the count; this only bounds a stuck one.
        measure_from + Duration::from_secs(3600)
    });
    let sequence = Arc::new(AtomicU64::new(0));
    let recorded = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (op, sequence, recorded, errors) = (
            Arc::clone(&op),
            Arc::clone(&sequence),
            Arc::clone(&recorded),
            Arc::clone(&errors),
        );
        handles.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut last_end = measure_from;
            loop {
                let start = Instant::now();
                let measured = start >= measure_from;
                if start >= deadline
                    || (measured
                        && load
                            .count
                            .is_some_and(|count| recorded.fetch_add(1, Ordering::Relaxed) >= count))
                {
                    break;
                }
                let result = op(sequence.fetch_add(1, Ordering::Relaxed)).await;
                if !measured {
                    continue;
                }
                last_end = Instant::now();
                match result {
                    Ok(sample) => samples.push(sample),
                    Err(err) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < ERRORS_SHOWN {
                            eprintln!("  error: {err}");
                        }
                    }
                }
            }
            (samples, last_end)
        }));
    }
    let mut samples = Vec::new();
    let mut last_end = measure_from;
    for handle in handles {
        let (mut worker_samples, worker_end) = handle.await.expect("a load worker panicked");
        samples.append(&mut worker_samples);
        last_end = last_end.max(worker_end);
    }
    Samples {
        samples,
        errors: errors.load(Ordering::Relaxed),
        elapsed: last_end.saturating_duration_since(measure_from),
    }
}
