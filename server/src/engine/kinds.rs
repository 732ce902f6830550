//! Which kinds are valid: the kinds StartTask accepts, and the kinds a worker may serve.
//!
//! A kind is *built in* (`executor`), *declared* by the operator (`--worker-kind`), or
//! *learned* from a worker's `hello` (unless `--learn-worker-kinds=false`). A `hello` costs
//! a client nothing, so what it teaches must not outlive the worker: a learned kind is
//! valid while a worker serves it on some replica and for `--worker-kind-ttl` after the
//! last one left, then StartTask refuses it (KIND_UNKNOWN) and the store forgets it. Each
//! replica refreshes the last-served time of the kinds its connected workers serve
//! ([`Engine::keep_worker_kinds`], a loop of `cluster.rs`), so the TTL counts from the
//! moment no worker anywhere served the kind, whichever replica is asked. Declared kinds
//! never expire: they are the operator's list, for kinds whose tasks should be accepted
//! even while no worker is connected.
//!
//! Tasks of a kind that expired while they waited PENDING stay queued and start when a
//! worker for the kind connects again: they were accepted, and only their client (or a
//! cancel) decides they are no longer wanted.
//!
//! Kind names have one shape everywhere ([`check_kind_name`]): what a `hello` may name,
//! what `--worker-kind` may declare, and so all StartTask can accept.

use std::time::{Duration, SystemTime};

use super::{Engine, EngineConfig};
use crate::error::{Echo, Error, Result};

/// The most kinds one `hello` may name: a worker process serves a handful; a long list is
/// a client filling the kind table.
pub const MAX_KINDS_PER_HELLO: usize = 64;

/// The longest kind name, in bytes (the allowed characters are all ASCII).
pub const MAX_KIND_LEN: usize = 128;

/// Whether `name` can be a kind: 1 to [`MAX_KIND_LEN`] characters of `A-Z a-z 0-9 . _ / -`
/// (room for `team/agent.v2`; nothing that needs quoting in a log line, a metric label or
/// a command line).
pub fn check_kind_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-');
    if name.is_empty() || name.len() > MAX_KIND_LEN || !name.chars().all(allowed) {
        return Err(format!(
            "{} is not a kind name: 1 to {MAX_KIND_LEN} characters of A-Z a-z 0-9 . _ / -",
            Echo(name)
        ));
    }
    Ok(())
}

impl EngineConfig {
    /// The oldest last-served time of a learned kind still valid at `now`.
    fn served_since(&self, now: SystemTime) -> SystemTime {
        now.checked_sub(self.worker_kind_ttl)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// How often a replica refreshes the kinds of its workers: three times per TTL, so a
    /// refresh or two may fail (a slow store) before a served kind looks expired; and at
    /// least as often as it renews its lease.
    fn refresh_worker_kinds_every(&self, lease_ttl: Duration) -> Duration {
        lease_ttl.min(self.worker_kind_ttl) / 3
    }
}

impl Engine {
    /// Whether tasks of `kind`, not a built-in one, are accepted: it is declared, served by
    /// a worker connected here, or learned and served by some worker within the TTL.
    pub(super) async fn is_worker_kind(&self, kind: &str) -> Result<bool> {
        let config = &self.config;
        if config.worker_kinds.iter().any(|declared| declared == kind)
            || self.places.workers.serves(kind)
        {
            return Ok(true);
        }
        // A name no hello could have taught is not worth a round trip to the store.
        if !config.learn_worker_kinds || check_kind_name(kind).is_err() {
            return Ok(false);
        }
        let since = config.served_since(SystemTime::now());
        Ok(self.worker_kinds.is_worker_kind(kind, since).await?)
    }

    /// Checks the kinds a `hello` names against the kind rules, and learns them (for every
    /// replica) if this replica learns kinds. Built-in kinds cannot be served by workers;
    /// without learning, only declared kinds can.
    pub(super) async fn admit_worker_kinds(&self, kinds: &[String]) -> Result<()> {
        if let Some(builtin) = kinds
            .iter()
            .find(|kind| self.places.kinds.get(kind).is_ok())
        {
            return Err(Error::invalid(
                "hello.kinds",
                format!("{} is a built-in kind", Echo(builtin)),
            ));
        }
        let config = &self.config;
        if !config.learn_worker_kinds {
            return match kinds
                .iter()
                .find(|kind| !config.worker_kinds.contains(kind))
            {
                Some(undeclared) => Err(Error::KindNotDeclared(undeclared.clone())),
                None => Ok(()),
            };
        }
        self.worker_kinds
            .mark_served(kinds, SystemTime::now())
            .await?;
        Ok(())
    }

    /// Refreshes the last-served time of the kinds the workers connected here serve (one
    /// store command for all of them), and forgets the learned kinds nobody served within
    /// the TTL. Run periodically ([`Engine::refresh_worker_kinds_every`]).
    pub async fn keep_worker_kinds(&self) {
        let now = SystemTime::now();
        let config = &self.config;
        if config.learn_worker_kinds {
            let served = self.places.workers.kinds();
            if let Err(err) = self.worker_kinds.mark_served(&served, now).await {
                tracing::warn!(%err, "cannot refresh the kinds this replica's workers serve");
            }
        }
        // Also without learning: kinds learned before (or by a replica that learns) must not
        // stay in the store for ever.
        match self
            .worker_kinds
            .forget_worker_kinds(config.served_since(now))
            .await
        {
            Ok(0) => {}
            Ok(forgotten) => {
                tracing::info!(forgotten, ttl = ?config.worker_kind_ttl, "forgot learned kinds no worker served within their TTL")
            }
            Err(err) => tracing::debug!(%err, "cannot forget expired learned kinds"),
        }
    }

    /// How often to run [`Engine::keep_worker_kinds`] on a replica whose lease lives
    /// `lease_ttl`.
    pub fn refresh_worker_kinds_every(&self, lease_ttl: Duration) -> Duration {
        self.config.refresh_worker_kinds_every(lease_ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_short_and_plain() {
        for good in [
            "research",
            "sleep",
            "team/agent.v2",
            "a_b-c",
            &"x".repeat(128),
        ] {
            assert_eq!(check_kind_name(good), Ok(()), "{good}");
        }
        for bad in ["", "a b", "a:b", "ünï", "a\nb", "*", &"x".repeat(129)] {
            let err = check_kind_name(bad).unwrap_err();
            assert!(err.len() < 200, "a short prefix only: {err}");
        }
    }

    #[test]
    fn refreshes_come_three_times_per_ttl_and_per_lease() {
        let config = |ttl| EngineConfig {
            replica_id: "a".to_owned(),
            default_grace: Duration::from_secs(30),
            max_concurrency: 1,
            worker_kinds: Vec::new(),
            learn_worker_kinds: true,
            worker_kind_ttl: ttl,
            limits: crate::limits::tests::defaults(),
            checkpoint_limits: crate::task::CheckpointLimits::DEFAULT,
            cancelled_session_ttl: Duration::from_secs(600),
            hand_back_on_drain: true,
        };
        let lease = Duration::from_secs(10);
        assert_eq!(
            config(Duration::from_secs(600)).refresh_worker_kinds_every(lease),
            lease / 3
        );
        assert_eq!(
            config(Duration::from_secs(3)).refresh_worker_kinds_every(lease),
            Duration::from_secs(1)
        );
        assert_eq!(
            config(Duration::MAX).served_since(SystemTime::now()),
            SystemTime::UNIX_EPOCH
        );
    }
}
