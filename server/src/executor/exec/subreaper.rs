//! The per-task subreaper: a small process between `reinsd` and an `exec` program, so that
//! everything the program starts stays below something that can kill it.
//!
//! `reinsd` re-executes its own binary (`/proc/self/exe`, which still works after the binary
//! on disk was replaced by an upgrade) under the name [`ARG0`]; `main` hands such a process
//! to [`run_if_invoked`] before anything else starts. The subreaper
//!
//! 1. becomes a child subreaper (`PR_SET_CHILD_SUBREAPER`): descendants that `setsid` or
//!    double-fork are reparented to it when their parent dies, not to init;
//! 2. starts the program in a process group of its own, with the task's limits, and reports
//!    `started <pid>` (or `failed <why>`) on the lifeline;
//! 3. reaps orphans while the program runs; when the program exits it SIGKILLs and reaps
//!    every descendant left ([`process_tree`]) and exits **as the program did** (same exit
//!    code, or killed by the same signal), so `reinsd` reads the program's status as its own;
//! 4. when the lifeline reaches end of file — the job was dropped by a hard cancel, or
//!    `reinsd` itself died, even by SIGKILL, as the kernel then closes its end — it kills
//!    the whole tree the same way and exits.
//!
//! The lifeline is one end of a socket pair whose other end only the job holds.
//! `PR_SET_PDEATHSIG` would be the textbook way to notice a dead parent, but it fires when
//! the parent *thread* that forked ends, and `reinsd` spawns from tokio's threads. The
//! subreaper ignores SIGTERM, SIGINT, SIGHUP and SIGQUIT (the program gets them back to
//! their defaults), so a signal meant for a whole service (systemd stopping its unit, a
//! Ctrl-C) cannot take it away before its program; soft cancels are sent by `reinsd` to the
//! program's process group directly.
//!
//! What it cannot stop: a program running as the same user may kill its subreaper
//! (`kill -9 $PPID`) and then its descendants go to init. Hostile code belongs under
//! another user or in a sandbox; this is for programs that merely daemonise or forget
//! their children.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::prctl;
use nix::sys::signal::{SigHandler, Signal, killpg, raise, signal};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use super::Launch;
use super::process_tree;
use super::rlimit::Rlimits;

/// The name a subreaper process runs under (its `argv[0]`; what `ps` shows).
pub const ARG0: &str = "reinsd-exec-subreaper";

/// Signals the subreaper ignores, and resets to their defaults for its program.
const SERVICE_SIGNALS: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// The longest report line read from a subreaper.
const MAX_REPORT: usize = 4096;

/// `reinsd`'s end of a running subreaper. Dropping it (the job ended, or a hard cancel
/// dropped it) SIGKILLs the program's process group itself, so the program stops without
/// waiting for the subreaper to be scheduled, and closes the lifeline, on which the
/// subreaper kills whatever else is left.
pub(super) struct Subreaper {
    /// Our end of the socket pair: the subreaper reports the start on it, and takes its end
    /// of file as the order to kill the tree.
    lifeline: BufReader<tokio::net::UnixStream>,
    /// The program's process group (the program's pid) once the subreaper has reported it,
    /// until the subreaper has exited.
    program_group: Option<Pid>,
}

impl Subreaper {
    /// Starts the subreaper of `launch`, its stdout and stderr piped. The program's start
    /// is reported by [`Subreaper::started`].
    pub(super) fn spawn(launch: &Launch) -> std::io::Result<(SubreaperProcess, Subreaper)> {
        let (ours, theirs) = UnixStream::pair()?;
        let lifeline_fd = theirs.as_raw_fd();
        let mut command = Command::new("/proc/self/exe");
        command
            .arg0(ARG0)
            .args(Request::args(lifeline_fd, launch))
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: a signal to reinsd's group (a Ctrl-C) is not for tasks.
            .process_group(0);
        if let Some(cwd) = &launch.cwd {
            command.current_dir(cwd);
        }
        // SAFETY: only fcntl, which is async-signal-safe, between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // The subreaper's end of the lifeline is the one descriptor it inherits
                // beyond stdio: every other descriptor of reinsd stays close-on-exec.
                let fd = BorrowedFd::borrow_raw(lifeline_fd);
                fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
                Ok(())
            });
        }
        let child = command.spawn()?;
        drop(theirs);
        ours.set_nonblocking(true)?;
        let subreaper = Subreaper {
            lifeline: BufReader::new(tokio::net::UnixStream::from_std(ours)?),
            program_group: None,
        };
        Ok((SubreaperProcess(Some(child)), subreaper))
    }

    /// Waits for the subreaper's report that the program runs; `Err` says why it did not
    /// start.
    pub(super) async fn started(&mut self) -> Result<(), String> {
        let mut report = String::new();
        let read = (&mut self.lifeline)
            .take(MAX_REPORT as u64)
            .read_line(&mut report)
            .await;
        match read.map(|_| report.trim_end().split_once(' ')) {
            Ok(Some(("started", pid))) => {
                // Never 0 or negative: `killpg` would then signal reinsd's own group.
                let pid = pid
                    .parse::<i32>()
                    .ok()
                    .filter(|&pid| pid > 0)
                    .ok_or_else(|| format!("bad report {report:?}"))?;
                self.program_group = Some(Pid::from_raw(pid));
                Ok(())
            }
            Ok(Some(("failed", why))) => Err(why.to_owned()),
            Ok(_) => Err("the exec subreaper ended before starting it".to_owned()),
            Err(err) => Err(format!("no report from the exec subreaper: {err}")),
        }
    }

    /// Signals the program's process group (not the descendants that left it).
    pub(super) fn signal_program(&self, signal: Signal) {
        if let Some(group) = self.program_group {
            // ESRCH (nothing left in the group) is the normal case after an exit.
            let _ = killpg(group, signal);
        }
    }

    /// To be called once the subreaper has exited, which it does after killing what was
    /// left below it. Anything of the group still there was left by a subreaper killed from
    /// outside: kill it, then never signal the group again (its id may be reused).
    pub(super) fn exited(&mut self) {
        self.signal_program(Signal::SIGKILL);
        self.program_group = None;
    }
}

impl Drop for Subreaper {
    fn drop(&mut self) {
        self.signal_program(Signal::SIGKILL);
    }
}

/// The subreaper's process handle. Dropped before the subreaper has exited (a hard cancel
/// dropped the job), it waits for the exit on a task of its own, which ends as soon as the
/// subreaper has killed its tree: left to tokio's orphan queue, the exited subreaper could
/// stay a zombie until some other child of reinsd exits.
pub(super) struct SubreaperProcess(Option<Child>);

impl Deref for SubreaperProcess {
    type Target = Child;

    fn deref(&self) -> &Child {
        self.0.as_ref().expect("taken only on drop")
    }
}

impl DerefMut for SubreaperProcess {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("taken only on drop")
    }
}

impl Drop for SubreaperProcess {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None))
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = child.wait().await;
            });
        }
    }
}

/// The command line of a subreaper after its [`ARG0`]: `LIFELINE_FD RLIMITS PROGRAM ARGV0
/// [ARG…]`, written by [`Subreaper::spawn`] and read by [`run_if_invoked`].
#[derive(Debug, PartialEq)]
struct Request {
    lifeline_fd: RawFd,
    rlimits: Rlimits,
    program: PathBuf,
    argv: Vec<OsString>,
}

impl Request {
    fn args(lifeline_fd: RawFd, launch: &Launch) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            lifeline_fd.to_string().into(),
            launch.rlimits.to_string().into(),
            launch.program.clone().into(),
        ];
        args.extend(launch.argv.iter().map(OsString::from));
        args
    }

    fn parse(args: &[OsString]) -> Result<Request, &'static str> {
        let [lifeline_fd, rlimits, program, argv @ ..] = args else {
            return Err("expected LIFELINE_FD RLIMITS PROGRAM ARGV0 [ARG…]");
        };
        let lifeline_fd = lifeline_fd
            .to_str()
            .and_then(|fd| fd.parse().ok())
            .ok_or("LIFELINE_FD is not a number")?;
        let rlimits = rlimits
            .to_str()
            .and_then(|spec| Rlimits::parse(spec).ok())
            .ok_or("RLIMITS is not a limit list")?;
        if argv.is_empty() {
            return Err("ARGV0 is missing");
        }
        Ok(Request {
            lifeline_fd,
            rlimits,
            program: PathBuf::from(program),
            argv: argv.to_vec(),
        })
    }
}

/// If this process is a subreaper (started as [`ARG0`]), runs it; it never returns then.
/// Otherwise returns at once.
pub fn run_if_invoked() {
    let mut args = std::env::args_os();
    if args.next().as_deref() != Some(OsStr::new(ARG0)) {
        return;
    }
    let request = match Request::parse(&args.collect::<Vec<_>>()) {
        Ok(request) => request,
        Err(what) => {
            eprintln!("{ARG0}: {what} (this mode is started by reinsd, not by hand)");
            std::process::exit(2)
        }
    };
    // SAFETY: reinsd passed this descriptor, open, for this process to own.
    let lifeline = unsafe { UnixStream::from_raw_fd(request.lifeline_fd) };
    supervise(lifeline, request)
}

/// Reports on the lifeline that the program could not be started, and exits with `code`.
fn fail(lifeline: &UnixStream, why: &str, code: i32) -> ! {
    report(lifeline, &format!("failed {}", why.replace('\n', " ")));
    std::process::exit(code)
}

/// One report line to reinsd; if reinsd is gone there is nobody to tell.
fn report(mut lifeline: &UnixStream, line: &str) {
    let _ = lifeline.write_all(format!("{line}\n").as_bytes());
}

fn supervise(lifeline: UnixStream, request: Request) -> ! {
    // The program must not inherit the lifeline: it would be one more holder of it.
    if let Err(err) = fcntl(&lifeline, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)) {
        fail(
            &lifeline,
            &format!("cannot set up the lifeline: {err}"),
            126,
        );
    }
    // Run as /proc/self/exe, the process would be named `exe` in ps and top.
    let _ = prctl::set_name(c"reins-subreaper");
    if let Err(err) = prctl::set_child_subreaper(true) {
        fail(
            &lifeline,
            &format!("cannot become a child subreaper: {err}"),
            126,
        );
    }
    for service_signal in SERVICE_SIGNALS {
        // SAFETY: ignoring a signal installs no handler.
        let _ = unsafe { signal(service_signal, SigHandler::SigIgn) };
    }
    let Request {
        program,
        argv,
        rlimits,
        ..
    } = request;
    let mut command = std::process::Command::new(&program);
    command.arg0(&argv[0]).args(&argv[1..]).process_group(0);
    // SAFETY: only signal dispositions and setrlimit, both plain system calls, between
    // fork and exec.
    unsafe {
        command.pre_exec(move || {
            for service_signal in SERVICE_SIGNALS {
                signal(service_signal, SigHandler::SigDfl)?;
            }
            rlimits.apply()
        });
    }
    let program_pid = match command.spawn() {
        Ok(child) => Pid::from_raw(child.id() as i32),
        Err(err) => {
            // The shell's codes: 127 not found, 126 found but not runnable.
            let code = if err.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            fail(&lifeline, &err.to_string(), code)
        }
    };
    report(&lifeline, &format!("started {program_pid}"));

    std::thread::spawn(move || {
        // Nothing is ever sent this way: a read returns at the end (or when the lifeline
        // breaks, which ends the task all the same).
        while let Err(err) = std::io::Read::read(&mut &lifeline, &mut [0u8; 1]) {
            if err.kind() != std::io::ErrorKind::Interrupted {
                break;
            }
        }
        let _ = killpg(program_pid, Signal::SIGKILL);
        process_tree::kill_descendants();
        // The main thread reaps the program and sweeps what is left.
    });

    let status = wait_for(program_pid);
    process_tree::kill_and_reap_all();
    exit_like(status)
}

/// Reaps children (orphans reparented to us, reaped so they leave no zombie) until the
/// program itself ends; its status.
fn wait_for(program: Pid) -> Option<WaitStatus> {
    loop {
        match waitpid(None, None) {
            Ok(status @ (WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, ..)))
                if pid == program =>
            {
                return Some(status);
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
}

/// Ends this process the way the program ended: the same exit code, or the same signal.
fn exit_like(status: Option<WaitStatus>) -> ! {
    match status {
        Some(WaitStatus::Exited(_, code)) => std::process::exit(code),
        Some(WaitStatus::Signaled(_, program_signal, _)) => {
            // No core file of the subreaper's own for a SIGSEGV of the program's.
            let _ = prctl::set_dumpable(false);
            // SAFETY: restoring the default disposition installs no handler.
            let _ = unsafe { signal(program_signal, SigHandler::SigDfl) };
            let _ = raise(program_signal);
            // Signals whose default is to be ignored cannot have ended the program.
            std::process::exit(128 + program_signal as i32)
        }
        _ => std::process::exit(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_carries_the_launch_to_the_subreaper() {
        let launch = Launch {
            program: "/usr/bin/busybox".into(),
            argv: vec!["sh".into(), "-c".into(), "echo 'a b' \n ok".into()],
            env: Vec::new(),
            cwd: None,
            rlimits: Rlimits::parse("nofile=64,cpu=2m").unwrap(),
        };
        let args = Request::args(7, &launch);
        assert_eq!(
            Request::parse(&args),
            Ok(Request {
                lifeline_fd: 7,
                rlimits: launch.rlimits.clone(),
                program: launch.program.clone(),
                argv: launch.argv.iter().map(OsString::from).collect(),
            })
        );
        let no_limits = Launch {
            rlimits: Rlimits::default(),
            ..launch
        };
        assert!(Request::parse(&Request::args(7, &no_limits)).is_ok());
    }

    #[test]
    fn a_malformed_command_line_is_refused() {
        let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(Request::parse(&args(&["3", "", "/bin/sh"])).is_err());
        assert!(Request::parse(&args(&["x", "", "/bin/sh", "sh"])).is_err());
        assert!(Request::parse(&args(&["3", "bogus", "/bin/sh", "sh"])).is_err());
    }
}
