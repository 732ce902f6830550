//! What `/proc` tells about local processes (Linux): a process's resident memory and CPU
//! time, whether it has exited, and which process listens on a TCP port.

use std::fs;
use std::io;

/// VmRSS of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other(format!("no VmRSS in /proc/{pid}/status")))
}

/// Clock ticks per second of `/proc/{pid}/stat` (`USER_HZ`): 100 on every Linux ABI.
const USER_HZ: f64 = 100.0;

/// CPU time process `pid` has used so far, user and system, all its threads, in seconds.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the `)` of the name: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|field| field.parse::<f64>().ok())
    };
    match (ticks(14), ticks(15)) {
        (Some(user), Some(system)) => Ok((user + system) / USER_HZ),
        _ => Err(io::Error::other(format!(
            "no CPU times in /proc/{pid}/stat"
        ))),
    }
}

/// True once process `pid` has exited: gone, or a zombie not yet reaped by its parent.
pub fn has_exited(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // `pid (comm) S …`: the name may hold spaces and parentheses, the state follows the
    // last `)`.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some("Z" | "X") | None)
}

/// The process with a socket listening on TCP `port` (IPv4 or IPv6), if this user may see it.
pub fn listening_on(port: u16) -> Option<u32> {
    const LISTEN: &str = "0A";
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields.get(1)?.rsplit_once(':')?.1;
                    let inode = fields.get(9)?;
                    let listening = fields.get(3) == Some(&LISTEN)
                        && u16::from_str_radix(local_port, 16).ok() == Some(port);
                    listening.then(|| format!("socket:[{inode}]"))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let holds_socket = fs::read_dir(entry.path().join("fd"))
            .ok()?
            .flatten()
            .filter_map(|fd| fs::read_link(fd.path()).ok())
            .any(|target| {
                inodes
                    .iter()
                    .any(|inode| target.as_os_str() == inode.as_str())
            });
        holds_socket.then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_has_resident_memory() {
        let me = std::process::id();
        assert!(!has_exited(me));
        assert!(rss_bytes(me).unwrap() > 0);
        // Spinning shows as CPU time within a few ticks, however busy the machine.
        let spent = cpu_seconds(me).unwrap();
        let busy = std::time::Instant::now();
        while cpu_seconds(me).unwrap() <= spent {
            assert!(busy.elapsed() < std::time::Duration::from_secs(10));
        }
    }

    #[test]
    fn finds_the_process_listening_on_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listening_on(port), Some(std::process::id()));
    }
}
