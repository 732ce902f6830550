//! Files re-read while the server runs (the TLS certificate and key, the auth config):
//! [`watch`] looks at them every `--reload-interval` and calls the reloader when their
//! contents changed. Contents rather than modification times, because Kubernetes updates a
//! mounted Secret by swapping a symlink, which leaves the times of the paths a server was
//! given unchanged. A reload that fails (a half-written file, a bad certificate) is logged
//! and the previous configuration stays in force; it is tried again when the files change
//! again.

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::background::Background;

/// The SHA-256 of the files' contents, in order; `None` when one cannot be read.
pub(crate) fn fingerprint(paths: &[PathBuf]) -> Option<[u8; 32]> {
    let mut hash = Sha256::new();
    for path in paths {
        let contents = std::fs::read(path).ok()?;
        hash.update((contents.len() as u64).to_le_bytes());
        hash.update(&contents);
    }
    Some(hash.finalize().into())
}

/// Calls `reload` whenever the contents of `paths` differ from what they were at the last
/// successful load (or at the start), checking every `interval`. `what` names the files in
/// the log.
pub(crate) fn watch(
    background: &Background,
    what: &'static str,
    paths: Vec<PathBuf>,
    interval: Duration,
    mut reload: impl FnMut() -> Result<(), String> + Send + 'static,
) {
    let mut loaded = fingerprint(&paths);
    background.spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failed_for = None;
        loop {
            ticks.tick().await;
            let Some(now) = fingerprint(&paths) else {
                continue;
            };
            if Some(now) == loaded || Some(now) == failed_for {
                continue;
            }
            match reload() {
                Ok(()) => {
                    tracing::info!(what, ?paths, "reloaded");
                    loaded = Some(now);
                    failed_for = None;
                }
                Err(err) => {
                    tracing::warn!(what, ?paths, %err, "cannot reload; keeping the previous one");
                    failed_for = Some(now);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_change_of_contents_reloads_once_and_a_failed_reload_waits_for_the_next_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, "one").unwrap();
        let background = Background::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        watch(
            &background,
            "test",
            vec![path.clone()],
            Duration::from_secs(1),
            move || {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                // The second reload fails.
                if n == 1 {
                    Err("bad".to_owned())
                } else {
                    Ok(())
                }
            },
        );
        let settle = || tokio::time::sleep(Duration::from_millis(2500));
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 0, "unchanged: no reload");
        std::fs::write(&path, "two").unwrap();
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        std::fs::write(&path, "three").unwrap();
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "failed once, not retried");
        std::fs::write(&path, "four").unwrap();
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        background.shut_down().await;
    }
}
