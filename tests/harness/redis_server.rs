//! A real `redis-server` for tests: on a free loopback port, in a temporary directory,
//! never the machine's shared 6379. It can be stopped and started again on the same port
//! and data directory (an outage), with or without AOF persistence. Dropping it kills the
//! process.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long redis-server may take to answer PING after it starts.
const STARTUP: Duration = Duration::from_secs(10);

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    append_only: bool,
    dir: tempfile::TempDir,
    /// More flags of redis-server (`--requirepass`, the TLS port and its files).
    extra: Vec<String>,
}

fn redis_server_binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER_BIN")
        .map_or_else(|| PathBuf::from("redis-server"), PathBuf::from)
}

/// A loopback port free now (another process may take it before the caller binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    // With --requirepass the answer is an error that starts `-NOAUTH`: up all the same.
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && (&reply == b"+PONG\r\n" || reply.starts_with(b"-NOAUTH"))
}

impl RedisServer {
    /// A server that keeps nothing on disk.
    pub fn start() -> RedisServer {
        RedisServer::launch(false)
    }

    /// A server with the append-only file on (`appendfsync always`): what it acknowledged
    /// survives a stop and start.
    pub fn start_with_aof() -> RedisServer {
        RedisServer::launch(true)
    }

    /// A server with more flags, e.g. `--requirepass`; readiness is checked on its plain
    /// port (give a TLS server both `--port` and `--tls-port`: see [`RedisServer::port`]).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        RedisServer::launch_with(false, extra.iter().map(|&arg| arg.to_owned()).collect())
    }

    fn launch(append_only: bool) -> RedisServer {
        RedisServer::launch_with(append_only, Vec::new())
    }

    fn launch_with(append_only: bool, extra: Vec<String>) -> RedisServer {
        // Another process may take the port between the probe and the bind: try again.
        for _ in 0..5 {
            let mut server = RedisServer {
                child: None,
                port: free_port(),
                append_only,
                dir: tempfile::tempdir().expect("temp dir"),
                extra: extra.clone(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!(
            "redis-server did not start on a free port (is it installed? tests/run.sh installs it)"
        );
    }

    /// Starts the process on this server's port and directory; true once it answers.
    fn spawn(&mut self) -> bool {
        let mut command = Command::new(redis_server_binary());
        command
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
            ])
            .args(["--appendonly", if self.append_only { "yes" } else { "no" }])
            .args([
                "--appendfsync",
                "always",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = command
            .spawn()
            .expect("start redis-server (is it installed?)");
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if answers_ping(self.port) {
                self.child = Some(child);
                return true;
            }
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the process (an outage). Data on disk stays, if AOF is on.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "redis-server did not restart on port {}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
