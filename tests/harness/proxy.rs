//! Real L7 proxies in front of replicas, as a mesh sidecar or an ingress would be: nginx
//! (`grpc_pass`) and HAProxy (`proto h2`), each on a free loopback port with a config of
//! its own in a temporary directory, its stream and idle timeouts short
//! ([`PROXY_TIMEOUT`]) so that a test sees what they cut. Killed on drop; its log is
//! printed if the test panics.
//!
//! The binaries are `nginx` and `haproxy` on the PATH (or `$NGINX_BIN`, `$HAPROXY_BIN`);
//! tests/run.sh installs them (Debian `nginx`, `haproxy`). `grpcurl` is `$GRPCURL_BIN` or
//! on the PATH (tests/run.sh points it at the one the Python suite installs).

use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::PATIENCE;
use crate::redis_server::free_port;

/// Every timeout of the proxies that could cut a quiet stream: far below their defaults
/// (nginx 60 s, HAProxy's usual 50 s), so a test outlives several of them in seconds.
pub const PROXY_TIMEOUT: Duration = Duration::from_secs(3);

/// Which proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    Nginx,
    Haproxy,
}

/// A running proxy in front of some replicas.
pub struct Proxy {
    pub kind: ProxyKind,
    address: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn binary(variable: &str, name: &str) -> PathBuf {
    std::env::var_os(variable).map_or_else(|| PathBuf::from(name), PathBuf::from)
}

impl Proxy {
    /// Starts `kind` on a free port, balancing over `upstreams` (`host:port` each).
    pub fn start(kind: ProxyKind, upstreams: &[&str]) -> Proxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let log = dir.path().join("proxy.log");
        let secs = PROXY_TIMEOUT.as_secs();
        let (program, args, config) = match kind {
            ProxyKind::Nginx => {
                let servers: String = upstreams
                    .iter()
                    .map(|upstream| format!("    server {upstream};\n"))
                    .collect();
                let root = dir.path().display();
                // Run as root (CI), nginx's workers would drop to `nobody`, who cannot
                // enter the temporary directory.
                let as_root = std::fs::metadata("/proc/self").is_ok_and(|me| me.uid() == 0);
                let user = if as_root { "user root;" } else { "" };
                let config = format!(
                    "{user}\nworker_processes 1;\nerror_log {root}/proxy.log info;\npid {root}/nginx.pid;\n\
                     events {{ worker_connections 512; }}\n\
                     http {{\n  access_log off;\n\
                       client_body_temp_path {root}/body; proxy_temp_path {root}/proxy;\n\
                       fastcgi_temp_path {root}/fastcgi; uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;\n\
                       upstream reins {{\n{servers}    keepalive 16;\n  }}\n\
                       server {{\n    listen {address} http2;\n\
                         http2_idle_timeout {secs}s; keepalive_timeout {secs}s; client_body_timeout {secs}s;\n\
                         location / {{\n      grpc_pass grpc://reins;\n\
                           grpc_read_timeout {secs}s; grpc_send_timeout {secs}s; grpc_connect_timeout {secs}s;\n\
                         }}\n  }}\n}}\n"
                );
                let path = dir.path().join("nginx.conf");
                let args = vec![
                    "-p".to_owned(),
                    root.to_string(),
                    "-c".to_owned(),
                    path.display().to_string(),
                    "-g".to_owned(),
                    "daemon off;".to_owned(),
                ];
                (binary("NGINX_BIN", "nginx"), args, (path, config))
            }
            ProxyKind::Haproxy => {
                let servers: String = upstreams
                    .iter()
                    .enumerate()
                    .map(|(i, upstream)| format!("  server r{i} {upstream} proto h2\n"))
                    .collect();
                let config = format!(
                    "global\n  log stderr format raw local0 info\n\
                     defaults\n  mode http\n  log global\n  option httplog\n\
                       timeout connect {secs}s\n  timeout client {secs}s\n  timeout server {secs}s\n\
                       retries 3\n  option redispatch\n\
                     frontend grpc\n  bind {address} proto h2\n  default_backend reins\n\
                     backend reins\n  balance roundrobin\n{servers}"
                );
                let path = dir.path().join("haproxy.cfg");
                let args = vec![
                    "-db".to_owned(),
                    "-f".to_owned(),
                    path.display().to_string(),
                ];
                (binary("HAPROXY_BIN", "haproxy"), args, (path, config))
            }
        };
        std::fs::write(&config.0, &config.1).expect("write the proxy config");
        let child = Command::new(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("log"))
            .spawn()
            .unwrap_or_else(|err| panic!("start {}: {err}", program.display()));
        let proxy = Proxy {
            kind,
            address,
            child,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(&proxy.address).is_err() {
            assert!(
                Instant::now() < deadline,
                "{kind:?} did not listen on {}:\n{}",
                proxy.address,
                proxy.log()
            );
            std::thread::sleep(Duration::from_millis(20)); // polling with a deadline
        }
        proxy
    }

    /// `host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The proxy's own log and its stderr.
    pub fn log(&self) -> String {
        let stderr = self._dir.path().join("stderr.log");
        format!(
            "{}{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(stderr).unwrap_or_default()
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {:?} log ----\n{}", self.kind, self.log());
        }
    }
}

/// `grpcurl`: `$GRPCURL_BIN`, or the one on the PATH.
pub fn grpcurl() -> PathBuf {
    binary("GRPCURL_BIN", "grpcurl")
}
