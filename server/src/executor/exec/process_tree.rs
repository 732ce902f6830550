//! Killing and reaping every process below the calling one, which must be a child
//! subreaper (`PR_SET_CHILD_SUBREAPER`): then nothing started below it can leave its
//! subtree, not by `setsid`, not by double-forking. An orphan is reparented to it, not to
//! init, and every live descendant has a chain of live parents up to it.
//!
//! Descendants are found by walking the parent links of `/proc/<pid>/stat`. That walk is a
//! snapshot: a process may fork while it is killed. The loop in [`kill_and_reap_all`]
//! repeats until the caller has no child left, and since an orphan is reparented to the
//! caller, no child means no descendant.

use std::collections::{HashMap, HashSet};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpid};

/// SIGKILLs every descendant of the calling process once, parents before children (so
/// fewer of them fork again before they die). Like every `kill`-based tool (pkill, a
/// service manager without cgroups) it trusts a pid between reading and signalling it; a
/// descendant reaped by its own parent in that instant, and its pid reused at once by a
/// stranger, is the (pid-space-wrapping) exception.
pub fn kill_descendants() {
    for pid in descendants(getpid(), &process_table()) {
        let _ = kill(pid, Signal::SIGKILL);
    }
}

/// Kills every descendant of the calling process and reaps those that are its children,
/// until it has none left. Returns at once when it has no child (the common case: the
/// program left nothing behind), without reading `/proc`.
pub fn kill_and_reap_all() {
    while reap_exited() {
        kill_descendants();
        // Block until one of the processes just killed is gone, rather than poll. One is
        // always coming: a child of ours was alive at the walk, so it was killed then.
        if waitpid(None, None) == Err(Errno::ECHILD) {
            return;
        }
    }
}

/// Reaps every child that has already ended; whether any child is left.
fn reap_exited() -> bool {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return true,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// `(pid, parent pid)` of every process this one can see.
fn process_table() -> Vec<(Pid, Pid)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((Pid::from_raw(pid), parent_in_stat(&stat)?))
        })
        .collect()
}

/// The parent pid in the text of `/proc/<pid>/stat`: `pid (comm) state ppid …`, where
/// `comm` may itself hold spaces and parentheses.
fn parent_in_stat(stat: &str) -> Option<Pid> {
    let (_, fields) = stat.rsplit_once(") ")?;
    let ppid = fields.split_whitespace().nth(1)?.parse().ok()?;
    Some(Pid::from_raw(ppid))
}

/// Every process below `root` in `table`, parents before children.
fn descendants(root: Pid, table: &[(Pid, Pid)]) -> Vec<Pid> {
    let mut children: HashMap<Pid, Vec<Pid>> = HashMap::new();
    for &(pid, parent) in table {
        children.entry(parent).or_default().push(pid);
    }
    let mut found = Vec::new();
    // A pid is its own ancestor only in a torn snapshot; never loop on one.
    let mut seen = HashSet::from([root]);
    let mut next = vec![root];
    while let Some(parent) = next.pop() {
        for &child in children.get(&parent).into_iter().flatten() {
            if seen.insert(child) {
                found.push(child);
                next.push(child);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(n: i32) -> Pid {
        Pid::from_raw(n)
    }

    #[test]
    fn the_parent_is_read_after_the_command_name_whatever_it_holds() {
        assert_eq!(
            parent_in_stat("42 (sleep) S 7 42 42 0 -1 4194560"),
            Some(pid(7))
        );
        assert_eq!(parent_in_stat("42 (a) b (c) ) R 9 42 42 0"), Some(pid(9)));
        assert_eq!(parent_in_stat("garbage"), None);
    }

    #[test]
    fn descendants_are_the_whole_subtree_parents_first() {
        // 1 ─┬─ 10 ─── 11 ─── 12
        //    │   └─── 13
        //    └─ 20 (not ours)
        let table = [
            (pid(10), pid(1)),
            (pid(11), pid(10)),
            (pid(12), pid(11)),
            (pid(13), pid(10)),
            (pid(20), pid(1)),
        ];
        let below = descendants(pid(10), &table);
        let mut sorted = below.clone();
        sorted.sort();
        assert_eq!(sorted, [pid(11), pid(12), pid(13)]);
        let position = |p| below.iter().position(|&q| q == pid(p)).unwrap();
        assert!(position(11) < position(12));
        assert!(descendants(pid(12), &table).is_empty());
    }

    #[test]
    fn a_torn_snapshot_with_a_cycle_ends() {
        let table = [(pid(2), pid(3)), (pid(3), pid(2)), (pid(4), pid(3))];
        assert_eq!(descendants(pid(2), &table).len(), 2);
    }

    #[test]
    fn the_table_holds_this_process_and_its_parent() {
        let me = getpid();
        let parent = nix::unistd::getppid();
        assert!(process_table().contains(&(me, parent)));
    }
}
