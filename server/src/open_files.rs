//! The process's open-files limit (`RLIMIT_NOFILE`): every connection is a file, and the
//! soft limit is often far below the hard one (1,024 against 524,288 under systemd), so the
//! server raises it to the hard limit at start-up, as Go's runtime and many servers do.
//! Exec programs inherit the raised limit unless `--exec-rlimit nofile=…` sets theirs.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raises the soft limit to the hard limit; returns the limit in force afterwards.
pub fn raise_to_hard_limit() -> u64 {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(err) => {
            tracing::warn!(%err, "cannot read the open-files limit");
            return u64::MAX;
        }
    };
    if soft < hard
        && let Err(err) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(%err, soft, hard, "cannot raise the open-files limit");
        return soft;
    }
    tracing::info!(open_files = hard, was = soft, "open-files limit");
    hard
}
