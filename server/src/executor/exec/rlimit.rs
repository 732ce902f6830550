//! Resource limits the operator sets on every `exec` program
//! (`--exec-rlimit cpu=10s,as=1GiB,nofile=256`), applied with `setrlimit` in the program's
//! process just before it execs, soft and hard alike so the program cannot raise them.
//!
//! They are per-process limits (what `ulimit` sets): a program that starts ten processes may
//! use ten times the CPU time; per-task totals need a cgroup. `nproc` is left out on
//! purpose: it counts every process of the server's user, the server's own threads
//! included, so it is no per-task bound.

use std::fmt;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// What a limit's value counts, and so how it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    /// CPU seconds: `10`, `10s`, `2m` (whole seconds).
    Seconds,
    /// Bytes: `4096`, `512K`/`512KiB`, `1G`/`1GiB` (base 1024, like systemd).
    Bytes,
    /// A plain number.
    Count,
}

/// Every limit `--exec-rlimit` knows: key, resource, unit, whether 0 makes sense.
const LIMITS: &[(&str, Resource, Unit, bool)] = &[
    ("cpu", Resource::RLIMIT_CPU, Unit::Seconds, false),
    ("as", Resource::RLIMIT_AS, Unit::Bytes, false),
    ("data", Resource::RLIMIT_DATA, Unit::Bytes, false),
    ("stack", Resource::RLIMIT_STACK, Unit::Bytes, false),
    ("fsize", Resource::RLIMIT_FSIZE, Unit::Bytes, true),
    ("core", Resource::RLIMIT_CORE, Unit::Bytes, true),
    ("nofile", Resource::RLIMIT_NOFILE, Unit::Count, false),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rlimit {
    key: &'static str,
    resource: Resource,
    value: u64,
}

/// A parsed `--exec-rlimit` list, in the order of [`LIMITS`]; empty: no limits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rlimits(Vec<Rlimit>);

impl Rlimits {
    /// Parses `key=value,…` (see [`LIMITS`] and [`Unit`]); an empty text sets no limit.
    pub fn parse(spec: &str) -> Result<Rlimits, String> {
        let mut limits: Vec<Rlimit> = Vec::new();
        for item in spec.split(',').map(str::trim) {
            if item.is_empty() && spec.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = item.split_once('=') else {
                return Err(format!("{item:?}: expected KEY=VALUE"));
            };
            let (key, value) = (key.trim(), value.trim());
            let known = || {
                LIMITS
                    .iter()
                    .map(|(key, ..)| *key)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let Some(&(key, resource, unit, zero_allowed)) =
                LIMITS.iter().find(|(known, ..)| *known == key)
            else {
                return Err(format!("unknown limit {key:?} (known: {})", known()));
            };
            if limits.iter().any(|limit| limit.key == key) {
                return Err(format!("{key} is given twice"));
            }
            let value = parse_value(value, unit).map_err(|why| format!("{key}={value}: {why}"))?;
            if value == 0 && !zero_allowed {
                return Err(format!("{key}=0: must be positive"));
            }
            limits.push(Rlimit {
                key,
                resource,
                value,
            });
        }
        limits.sort_by_key(|limit| LIMITS.iter().position(|(key, ..)| *key == limit.key));
        Ok(Rlimits(limits))
    }

    /// Refuses limits above the server's own hard limits, which an unprivileged process
    /// cannot raise: better a clear message at startup than every task failing to start.
    pub fn check_against_server(&self) -> Result<(), String> {
        for limit in &self.0 {
            let (_, hard) = getrlimit(limit.resource)
                .map_err(|err| format!("getrlimit {}: {err}", limit.key))?;
            if limit.value > hard {
                return Err(format!(
                    "{}={} is above this server's own hard limit ({hard})",
                    limit.key, limit.value
                ));
            }
        }
        Ok(())
    }

    /// Sets every limit on the calling process. Called between fork and exec, so it only
    /// makes system calls: nothing here allocates.
    pub fn apply(&self) -> std::io::Result<()> {
        for limit in &self.0 {
            // Past the CPU limit the program gets SIGXCPU ("killed by signal SIGXCPU" says
            // why it died), and SIGKILL a second later if it handles that.
            let hard = if limit.resource == Resource::RLIMIT_CPU {
                limit.value.saturating_add(1)
            } else {
                limit.value
            };
            setrlimit(limit.resource, limit.value, hard)?;
        }
        Ok(())
    }
}

/// The canonical form, in seconds and bytes: what [`Rlimits::parse`] reads back.
impl fmt::Display for Rlimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, limit) in self.0.iter().enumerate() {
            let comma = if i == 0 { "" } else { "," };
            write!(f, "{comma}{}={}", limit.key, limit.value)?;
        }
        Ok(())
    }
}

fn parse_value(text: &str, unit: Unit) -> Result<u64, String> {
    let plain = || {
        text.parse::<u64>()
            .map_err(|_| "not a whole number".to_owned())
    };
    match unit {
        Unit::Count => plain(),
        Unit::Seconds => {
            if let Ok(seconds) = text.parse::<u64>() {
                return Ok(seconds);
            }
            let duration = humantime::parse_duration(text)
                .map_err(|_| "not a duration (10, 10s, 2m)".to_owned())?;
            if duration.subsec_nanos() != 0 {
                return Err("CPU time is counted in whole seconds".to_owned());
            }
            Ok(duration.as_secs())
        }
        Unit::Bytes => {
            let digits = text.trim_end_matches(|c: char| !c.is_ascii_digit());
            let suffix = &text[digits.len()..];
            let shift = match suffix {
                "" | "B" => 0,
                "K" | "KiB" => 10,
                "M" | "MiB" => 20,
                "G" | "GiB" => 30,
                "T" | "TiB" => 40,
                _ => {
                    return Err(format!(
                        "unknown size suffix {suffix:?} (K, M, G, T: base 1024)"
                    ));
                }
            };
            let number: u64 = digits
                .parse()
                .map_err(|_| "not a size (4096, 512K, 1GiB)".to_owned())?;
            number
                .checked_mul(1u64 << shift)
                .ok_or_else(|| "too large".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(spec: &str) -> Vec<(&'static str, u64)> {
        Rlimits::parse(spec)
            .unwrap()
            .0
            .iter()
            .map(|limit| (limit.key, limit.value))
            .collect()
    }

    fn error(spec: &str) -> String {
        Rlimits::parse(spec).unwrap_err()
    }

    #[test]
    fn the_documented_example_parses_into_seconds_bytes_and_counts() {
        assert_eq!(
            limits("cpu=10s,as=1GiB,nofile=256"),
            [("cpu", 10), ("as", 1 << 30), ("nofile", 256)]
        );
        assert_eq!(
            limits(" nofile = 64 , cpu=2m, stack=8M, fsize=0, core=0, data=512K "),
            [
                ("cpu", 120),
                ("data", 512 << 10),
                ("stack", 8 << 20),
                ("fsize", 0),
                ("core", 0),
                ("nofile", 64)
            ]
        );
        assert_eq!(limits("cpu=10,as=4096B"), [("cpu", 10), ("as", 4096)]);
        assert!(limits("").is_empty());
        assert!(limits("  ").is_empty());
    }

    #[test]
    fn the_canonical_form_reads_back_as_the_same_limits() {
        let parsed = Rlimits::parse("nofile=256,cpu=1m,as=1GiB").unwrap();
        assert_eq!(parsed.to_string(), "cpu=60,as=1073741824,nofile=256");
        assert_eq!(Rlimits::parse(&parsed.to_string()).unwrap(), parsed);
        assert_eq!(Rlimits::default().to_string(), "");
    }

    #[test]
    fn mistakes_are_named() {
        assert!(error("nproc=10").contains("unknown limit \"nproc\""));
        assert!(error("nproc=10").contains("known: cpu, as"));
        assert!(error("nofile").contains("expected KEY=VALUE"));
        assert!(error("nofile=lots").contains("nofile=lots: not a whole number"));
        assert!(error("nofile=1,nofile=2").contains("given twice"));
        assert!(error("cpu=1500ms").contains("whole seconds"));
        assert!(error("cpu=soon").contains("not a duration"));
        assert!(error("as=1GB").contains("unknown size suffix \"GB\""));
        assert!(error("as=99999999999T").contains("too large"));
        assert!(error("as=-1").contains("not a size"));
        assert!(error("nofile=0").contains("must be positive"));
        assert!(error("cpu=1,,nofile=2").contains("expected KEY=VALUE"));
    }

    #[test]
    fn limits_above_the_servers_hard_limit_are_refused() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert!(
            Rlimits::parse("nofile=16")
                .unwrap()
                .check_against_server()
                .is_ok()
        );
        if hard < u64::MAX {
            let above = Rlimits::parse(&format!("nofile={}", hard + 1)).unwrap();
            assert!(
                above
                    .check_against_server()
                    .unwrap_err()
                    .contains("hard limit")
            );
        }
    }
}
