//! The results table: one row per measured quantity with its count, errors, p50, p90,
//! p99 and max (in milliseconds), rate and the target it is held against, then free-form
//! notes (memory, placement of the calls, failures).

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

/// The largest latency told apart; longer ones are recorded as this (1 hour, in µs).
const HIGHEST_MICROS: u64 = 3_600_000_000;

/// Latencies in microseconds, with 3 significant figures.
#[derive(Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies(Histogram::new_with_bounds(1, HIGHEST_MICROS, 3).expect("the bounds are valid"))
    }
}

impl Latencies {
    pub fn record(&mut self, latency: Duration) {
        self.record_micros(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn record_micros(&mut self, micros: u64) {
        self.0.saturating_record(micros);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// The latency at quantile `q` (0 to 1), in milliseconds.
    fn quantile_ms(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    fn max_ms(&self) -> f64 {
        self.0.max() as f64 / 1000.0
    }
}

impl FromIterator<Duration> for Latencies {
    fn from_iter<I: IntoIterator<Item = Duration>>(iter: I) -> Latencies {
        let mut latencies = Latencies::default();
        iter.into_iter()
            .for_each(|latency| latencies.record(latency));
        latencies
    }
}

/// What a row is held against.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    P50(Duration),
    P99(Duration),
    /// At least this many per second.
    Rate(f64),
}

impl Target {
    fn met(self, row: &Row) -> bool {
        match self {
            Target::P50(limit) => row.latencies.quantile_ms(0.5) <= limit.as_secs_f64() * 1e3,
            Target::P99(limit) => row.latencies.quantile_ms(0.99) <= limit.as_secs_f64() * 1e3,
            Target::Rate(least) => row.rate.is_some_and(|rate| rate >= least),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::P50(limit) => write!(f, "p50<={}", humantime::format_duration(*limit)),
            Target::P99(limit) => write!(f, "p99<={}", humantime::format_duration(*limit)),
            Target::Rate(least) => write!(f, ">={least}/s"),
        }
    }
}

pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub latencies: Latencies,
    pub errors: u64,
    pub rate: Option<f64>,
    pub target: Option<Target>,
}

impl Row {
    pub fn new(
        scenario: impl Into<String>,
        metric: impl Into<String>,
        latencies: Latencies,
    ) -> Row {
        Row {
            scenario: scenario.into(),
            metric: metric.into(),
            latencies,
            errors: 0,
            rate: None,
            target: None,
        }
    }

    pub fn errors(mut self, errors: u64) -> Row {
        self.errors = errors;
        self
    }

    pub fn rate(mut self, per_second: f64) -> Row {
        self.rate = Some(per_second);
        self
    }

    pub fn target(mut self, target: Target) -> Row {
        self.target = Some(target);
        self
    }
}

/// Rows and notes of one scenario, or of the whole run.
#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    pub fn row(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn extend(&mut self, other: Report) {
        self.rows.extend(other.rows);
        self.notes.extend(other.notes);
    }
}

/// Bytes as decimal megabytes, one decimal.
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}

/// `ok` or `MISSED`; also for figures held against a target outside the table (memory).
pub fn verdict(met: bool) -> &'static str {
    if met { "ok" } else { "MISSED" }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.rows.is_empty() {
            writeln!(
                f,
                "{:<16} {:<34} {:>7} {:>4} {:>9} {:>9} {:>9} {:>9} {:>9}  target",
                "scenario",
                "metric",
                "count",
                "err",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "rate/s"
            )?;
        }
        for row in &self.rows {
            write!(
                f,
                "{:<16} {:<34} {:>7} {:>4}",
                row.scenario,
                row.metric,
                row.latencies.len(),
                row.errors
            )?;
            if row.latencies.len() == 0 {
                write!(f, " {:>9} {:>9} {:>9} {:>9}", "-", "-", "-", "-")?;
            } else {
                let l = &row.latencies;
                write!(
                    f,
                    " {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                    l.quantile_ms(0.5),
                    l.quantile_ms(0.9),
                    l.quantile_ms(0.99),
                    l.max_ms()
                )?;
            }
            match row.rate {
                Some(rate) => write!(f, " {rate:>9.1}")?,
                None => write!(f, " {:>9}", "-")?,
            }
            if let Some(target) = row.target {
                write!(f, "  {target} {}", verdict(target.met(row)))?;
            }
            writeln!(f)?;
        }
        for note in &self.notes {
            writeln!(f, "  * {note}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_in_milliseconds_and_keep_outliers() {
        let latencies: Latencies = [300, 1500, 5000, 250_000]
            .into_iter()
            .map(Duration::from_micros)
            .collect();
        assert_eq!(latencies.len(), 4);
        assert!((latencies.quantile_ms(0.5) - 1.5).abs() < 0.01);
        assert!((latencies.max_ms() - 250.0).abs() < 0.5);
    }

    #[test]
    fn targets_judge_the_right_figure() {
        let row = Row::new("s", "m", [Duration::from_millis(3)].into_iter().collect()).rate(10.0);
        assert!(!Target::P99(Duration::from_millis(2)).met(&row));
        assert!(Target::P50(Duration::from_millis(5)).met(&row));
        assert!(Target::Rate(10.0).met(&row));
        assert!(!Target::Rate(11.0).met(&row));
    }
}
