//! A real Prometheus server for tests (the Debian package `prometheus`, which `tests/run.sh`
//! installs): on a free loopback port, in a temporary directory, scraping the given
//! targets at a short interval; queried through its HTTP API. `promtool` (same package)
//! checks a scrape. And [`get`], the plain HTTP GET these tests need for `/metrics`,
//! `/healthz`, `/readyz` and the query API.
//!
//! Without the package the tests fail, saying how to install it, unless
//! `REINS_E2E_SKIP_PROMETHEUS=1` says to skip them: `tests/run.sh` sets it, with a banner,
//! only when the package cannot be installed.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{PATIENCE, eventually, free_port};

/// An HTTP answer: status code and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// `GET path` (with its query) on `address` (`host:port`), HTTP/1.0 so the body is neither
/// chunked nor kept alive; `None` if the server cannot be reached.
pub async fn get(address: &str, path: &str, accept: Option<&str>) -> Option<Answer> {
    let exchange = async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        let accept = accept.map_or(String::new(), |accept| format!("Accept: {accept}\r\n"));
        let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n{accept}\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let answer = String::from_utf8(answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some(Answer {
            status,
            body: body.to_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// `text` percent-encoded for a URL's query.
fn encoded(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// The path of a Prometheus binary (`prometheus`, `promtool`), or `None` to skip because
/// `REINS_E2E_SKIP_PROMETHEUS=1`. Panics if it is missing otherwise.
pub fn binary(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(path) => Some(path),
        None if std::env::var("REINS_E2E_SKIP_PROMETHEUS").is_ok_and(|skip| skip == "1") => {
            eprintln!("SKIPPED: {name} is not installed and REINS_E2E_SKIP_PROMETHEUS=1");
            None
        }
        None => panic!(
            "{name} is not installed: `apt-get install prometheus` (tests/run.sh does), or set \
             REINS_E2E_SKIP_PROMETHEUS=1 to skip the Prometheus tests"
        ),
    }
}

/// `promtool check metrics` on an exposition: what it reports (empty when clean) and
/// whether it exited 0.
pub fn promtool_check_metrics(promtool: &PathBuf, exposition: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool output");
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), report)
}

/// A running Prometheus server; dropping it kills the process (and prints its log if the
/// test panicked).
pub struct Prometheus {
    child: Child,
    address: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `targets` (`host:port`, job `reins`) every `interval`. Waits until ready.
    pub async fn start(binary: &PathBuf, targets: &[String], interval: Duration) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        let interval = format!("{}ms", interval.as_millis());
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n\
                 scrape_configs:\n  - job_name: reins\n    scrape_timeout: {interval}\n    \
                 static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let address = format!("127.0.0.1:{}", free_port());
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            child,
            address,
            log,
            _dir: dir,
        };
        eventually("Prometheus to be ready", || async {
            get(&prometheus.address, "/-/ready", None)
                .await
                .filter(|answer| answer.status == 200)
        })
        .await;
        prometheus
    }

    /// The result of an instant query (`data.result`, a vector), or the error Prometheus
    /// answered with.
    pub async fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let path = format!("/api/v1/query?query={}", encoded(promql));
        let answer = get(&self.address, &path, None)
            .await
            .ok_or("Prometheus does not answer")?;
        let json: serde_json::Value =
            serde_json::from_str(&answer.body).map_err(|err| format!("{err}: {}", answer.body))?;
        if json["status"] != "success" {
            return Err(answer.body);
        }
        Ok(json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The single value of an instant query that yields one sample, if it does.
    pub async fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await.ok()?;
        match result.as_slice() {
            [sample] => sample["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// Waits until `promql` yields `expected` (scrapes come every interval).
    pub async fn wait_value(&self, promql: &str, expected: f64) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let value = self.value(promql).await;
            if value == Some(expected) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{promql} = {value:?}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- prometheus log ----\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}
