//! Counters read from outside the replicas' API, for the `cost`, `cancel-under-load` and
//! `capacity` scenarios: Redis's `INFO` sections (`commandstats`, `memory`, `cpu`) on a
//! connection of the bench's own, and a Prometheus counter summed over its label sets,
//! scraped from a replica's `/metrics`.

use std::collections::HashMap;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use redis::aio::MultiplexedConnection;

use super::{Bench, BenchError, BenchResult, process};

/// A connection to the Redis of `--redis`, which `scenario` needs.
pub async fn redis(bench: &Bench, scenario: &str) -> BenchResult<MultiplexedConnection> {
    let url = bench.args.redis.as_deref().ok_or_else(|| {
        BenchError::Unexpected(format!(
            "{scenario} needs --redis URL (and --metrics URL of each replica)"
        ))
    })?;
    let client = redis::Client::open(url)
        .map_err(|err| BenchError::Unexpected(format!("--redis {url}: {err}")))?;
    client
        .get_multiplexed_async_connection()
        .await
        .map_err(|err| BenchError::Unexpected(format!("cannot reach Redis at {url}: {err}")))
}

/// One section of `INFO`.
pub async fn info(redis: &mut MultiplexedConnection, section: &str) -> BenchResult<String> {
    redis::cmd("INFO")
        .arg(section)
        .query_async(redis)
        .await
        .map_err(|err| BenchError::Unexpected(format!("INFO {section}: {err}")))
}

/// CPU seconds used so far by Redis (`INFO cpu`) and by the replicas found on this
/// machine (`/proc`), together.
pub async fn cpu_seconds(
    bench: &Bench,
    redis: &mut MultiplexedConnection,
) -> BenchResult<(f64, f64)> {
    let cpu = info(redis, "cpu").await?;
    let redis_cpu = info_field(&cpu, "used_cpu_sys").unwrap_or(0.0)
        + info_field(&cpu, "used_cpu_user").unwrap_or(0.0);
    let mut replicas = 0.0;
    for server in bench.cluster.servers.iter().chain(&bench.cluster.full) {
        if let Some(pid) = Bench::pid_of(server) {
            replicas += process::cpu_seconds(pid)?;
        }
    }
    Ok((redis_cpu, replicas))
}

/// A numeric field of an `INFO` reply (`used_memory:1234`).
pub fn info_field(info: &str, name: &str) -> Option<f64> {
    info.lines().find_map(|line| {
        let (field, value) = line.split_once(':')?;
        (field == name).then(|| value.trim().parse().ok())?
    })
}

/// Calls per command name (`INFO commandstats`, subcommands as `config|resetstat`).
#[derive(Clone, Debug, Default)]
pub struct Counts(HashMap<String, f64>);

impl Counts {
    pub fn get(&self, command: &str) -> f64 {
        self.0.get(command).copied().unwrap_or(0.0)
    }

    /// Growth of each command since `earlier`, `INFO` left out (the bench's own reads).
    pub fn since(&self, earlier: &Counts) -> Vec<(String, f64)> {
        self.0
            .iter()
            .filter(|(name, _)| name.as_str() != "info")
            .map(|(name, calls)| (name.clone(), calls - earlier.get(name)))
            .filter(|(_, grown)| *grown > 0.0)
            .collect()
    }

    /// Growth of all commands since `earlier`, `INFO` left out.
    pub fn total_since(&self, earlier: &Counts) -> f64 {
        self.since(earlier).iter().map(|(_, grown)| grown).sum()
    }
}

/// The call counts of an `INFO commandstats` reply
/// (`cmdstat_hset:calls=12,usec=…`).
pub fn commandstats(info: &str) -> Counts {
    Counts(
        info.lines()
            .filter_map(|line| {
                let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = fields
                    .split(',')
                    .find_map(|field| field.strip_prefix("calls="))?;
                Some((name.to_owned(), calls.parse().ok()?))
            })
            .collect(),
    )
}

/// The sum of a counter (or gauge) over its label sets that carry every one of `labels`
/// (`kind="sleep"`; none: all of them) in a Prometheus text exposition.
pub fn counter_sum(exposition: &str, name: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter(|line| {
            let set = line.split_once('{').map_or("", |(_, set)| set);
            labels
                .iter()
                .all(|label| set.split(['{', ',', '}']).any(|pair| pair == *label))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// [`counter_sum`] of the `/metrics` page at `url` (`http://host:port`).
pub async fn sum(url: &str, name: &str, labels: &[&str]) -> BenchResult<f64> {
    let unexpected = |what: String| BenchError::Unexpected(format!("{url}/metrics: {what}"));
    let uri: hyper::Uri = format!("{}/metrics", url.trim_end_matches('/'))
        .parse()
        .map_err(|err| unexpected(format!("{err}")))?;
    let authority = uri
        .authority()
        .ok_or_else(|| unexpected("no host:port".into()))?
        .to_string();
    let stream = tokio::net::TcpStream::connect(&authority).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| unexpected(format!("{err}")))?;
    tokio::spawn(connection);
    let request = hyper::Request::get(uri)
        .header(hyper::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|err| unexpected(format!("{err}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| unexpected(format!("{err}")))?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|err| unexpected(format!("{err}")))?
        .to_bytes();
    Ok(counter_sum(&String::from_utf8_lossy(&body), name, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_counts_calls_per_command() {
        let info = "# Commandstats\r\ncmdstat_hset:calls=12,usec=30,usec_per_call=2.50\r\n\
                    cmdstat_info:calls=3,usec=1\r\ncmdstat_config|resetstat:calls=1,usec=9\r\n";
        let counts = commandstats(info);
        assert_eq!(counts.get("hset"), 12.0);
        assert_eq!(counts.get("config|resetstat"), 1.0);
        let earlier = commandstats("cmdstat_hset:calls=2,usec=1\r\n");
        assert_eq!(counts.total_since(&earlier), 11.0, "INFO is left out");
    }

    #[test]
    fn info_fields_are_found_by_exact_name() {
        let info = "# Memory\r\nused_memory:1024\r\nused_memory_rss:4096\r\n";
        assert_eq!(info_field(info, "used_memory"), Some(1024.0));
        assert_eq!(info_field(info, "used_memory_peak"), None);
    }

    #[test]
    fn counter_sum_adds_every_label_set_of_that_counter_only() {
        let exposition = "# TYPE reins_store_requests_total counter\n\
                          reins_store_requests_total{op=\"get\"} 4\n\
                          reins_store_requests_total{op=\"create\"} 2\n\
                          reins_store_requests_total_other 100\n\
                          reins_store_request_seconds_count{op=\"get\"} 4\n";
        assert_eq!(
            counter_sum(exposition, "reins_store_requests_total", &[]),
            6.0
        );
        assert_eq!(
            counter_sum(exposition, "reins_store_requests_total", &["op=\"get\""]),
            4.0
        );
        assert_eq!(
            counter_sum(exposition, "reins_store_requests_total", &["op=\"ge\""]),
            0.0
        );
    }
}
