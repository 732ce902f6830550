//! The `--auth-config` file (TOML): principals, the optional JWT issuer, and the tenants'
//! quotas. [`AuthConfig::load`] reads and checks it whole, so that a reload either takes
//! a complete valid file or keeps the previous one.
//!
//! ```toml
//! [[principal]]
//! name = "alice"            # recorded on what she does
//! tenant = "acme"           # required, except for admins (every tenant)
//! roles = ["operator"]      # viewer | operator | worker | admin
//! token_sha256 = "<hex>"    # and/or client_cert = "<mTLS identity>"
//! kinds = ["research"]      # worker principals: the kinds they may serve (unset: any)
//!
//! [jwt]
//! jwks_file = "/etc/reins/jwks.json"
//! issuer = "https://kubernetes.default.svc"
//! audience = "reins"
//! tenant_claim = "reins/tenant"   # defaults; roles_claim, kinds_claim likewise
//!
//! [[tenant]]
//! name = "acme"
//! max_active_tasks = 10000
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::jwt::JwtVerifier;
use super::principal::Principal;
use super::roles::Role;
use crate::limits::{MAX_PRINCIPAL_BYTES, MAX_TENANT_BYTES};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    principal: Vec<PrincipalEntry>,
    jwt: Option<JwtEntry>,
    #[serde(default)]
    tenant: Vec<TenantEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalEntry {
    name: String,
    tenant: Option<String>,
    roles: Vec<Role>,
    token_sha256: Option<String>,
    client_cert: Option<String>,
    kinds: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JwtEntry {
    pub jwks_file: PathBuf,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    #[serde(default = "default_kinds_claim")]
    pub kinds_claim: String,
}

fn default_tenant_claim() -> String {
    "reins/tenant".to_owned()
}
fn default_roles_claim() -> String {
    "reins/roles".to_owned()
}
fn default_kinds_claim() -> String {
    "reins/kinds".to_owned()
}

/// One `[[tenant]]`: its quotas (unset: none).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantQuotas {
    pub name: String,
    pub max_active_tasks: Option<u64>,
    pub max_starts_per_second: Option<f64>,
    pub burst: Option<u64>,
    pub max_watchers: Option<u64>,
    pub max_workers: Option<u64>,
    pub exec: Option<Vec<String>>,
}

type TenantEntry = TenantQuotas;

/// A checked auth config.
pub(crate) struct AuthConfig {
    /// Principals with a token, by the SHA-256 of the token.
    pub(super) by_token: Vec<([u8; 32], Arc<Principal>)>,
    /// Principals by mTLS identity.
    pub(super) by_cert: HashMap<String, Arc<Principal>>,
    pub(super) jwt: Option<JwtVerifier>,
    pub(crate) tenants: HashMap<String, Arc<TenantQuotas>>,
    /// The JWKS file, watched with the config itself.
    pub(super) jwks_file: Option<PathBuf>,
}

/// The tenant names, principal names and kinds may use (they end up in logs and records).
pub(crate) fn check_tenant_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_TENANT_BYTES || !name.chars().all(allowed) {
        return Err(format!(
            "tenant {name:?}: must be 1 to 128 characters of A-Z a-z 0-9 . _ -"
        ));
    }
    Ok(())
}

impl AuthConfig {
    pub(crate) fn load(path: &Path) -> Result<AuthConfig, String> {
        let text =
            std::fs::read_to_string(path).map_err(|err| format!("{}: {err}", path.display()))?;
        AuthConfig::parse(&text, path.parent().unwrap_or(Path::new(".")))
            .map_err(|err| format!("{}: {err}", path.display()))
    }

    /// `base`: the directory a relative `jwks_file` is taken from.
    pub(crate) fn parse(text: &str, base: &Path) -> Result<AuthConfig, String> {
        let file: File = toml::from_str(text).map_err(|err| err.to_string())?;
        let mut by_token = Vec::new();
        let mut by_cert = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for entry in file.principal {
            let what = format!("principal {:?}", entry.name);
            if entry.name.is_empty() || !names.insert(entry.name.clone()) {
                return Err(format!("{what}: names must be present and unique"));
            }
            if entry.name.len() > MAX_PRINCIPAL_BYTES {
                return Err(format!("{what}: at most {MAX_PRINCIPAL_BYTES} bytes"));
            }
            if entry.roles.is_empty() {
                return Err(format!("{what}: no roles"));
            }
            let admin = entry.roles.contains(&Role::Admin);
            let tenant = match entry.tenant {
                Some(tenant) => {
                    check_tenant_name(&tenant).map_err(|err| format!("{what}: {err}"))?;
                    Some(tenant)
                }
                None if admin => None,
                None => return Err(format!("{what}: a tenant is required (except for admins)")),
            };
            if entry.kinds.is_some() && !entry.roles.contains(&Role::Worker) {
                return Err(format!("{what}: kinds are for worker principals"));
            }
            if entry.token_sha256.is_none() && entry.client_cert.is_none() {
                return Err(format!("{what}: needs token_sha256 or client_cert"));
            }
            let principal = Arc::new(Principal {
                name: entry.name.as_str().into(),
                tenant: tenant.map(Into::into),
                roles: entry.roles,
                kinds: entry.kinds.map(Into::into),
            });
            if let Some(hash) = entry.token_sha256 {
                let bytes = hex::decode(hash.trim())
                    .ok()
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                    .ok_or_else(|| format!("{what}: token_sha256 must be 64 hex digits"))?;
                if by_token.iter().any(|(known, _)| *known == bytes) {
                    return Err(format!("{what}: another principal has the same token"));
                }
                by_token.push((bytes, Arc::clone(&principal)));
            }
            if let Some(identity) = entry.client_cert
                && by_cert.insert(identity.clone(), principal).is_some()
            {
                return Err(format!(
                    "{what}: client_cert {identity:?} names another principal too"
                ));
            }
        }
        let jwks_file = file.jwt.as_ref().map(|jwt| base.join(&jwt.jwks_file));
        let jwt = match file.jwt {
            Some(entry) => Some(JwtVerifier::load(entry, base)?),
            None => None,
        };
        let mut tenants = HashMap::new();
        for tenant in file.tenant {
            check_tenant_name(&tenant.name)?;
            if tenant
                .max_starts_per_second
                .is_some_and(|rate| !(rate > 0.0 && rate.is_finite()))
            {
                return Err(format!(
                    "tenant {:?}: max_starts_per_second must be more than 0",
                    tenant.name
                ));
            }
            if tenants
                .insert(tenant.name.clone(), Arc::new(tenant))
                .is_some()
            {
                return Err("a [[tenant]] is listed twice".to_owned());
            }
        }
        Ok(AuthConfig {
            by_token,
            by_cert,
            jwt,
            tenants,
            jwks_file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AuthConfig, String> {
        AuthConfig::parse(text, Path::new("."))
    }

    const HASH: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    #[test]
    fn the_issue_example_parses() {
        let config = parse(&format!(
            r#"
            [[principal]]
            name = "alice"
            tenant = "acme"
            roles = ["operator"]
            token_sha256 = "{HASH}"

            [[principal]]
            name = "research-workers"
            tenant = "acme"
            roles = ["worker"]
            kinds = ["research"]
            client_cert = "spiffe://cluster.local/ns/agents/sa/research"

            [[tenant]]
            name = "acme"
            max_active_tasks = 10000
            max_starts_per_second = 200
            burst = 400
            max_watchers = 5000
            max_workers = 100
            exec = ["python3"]
            "#
        ))
        .unwrap();
        assert_eq!(config.by_token.len(), 1);
        let worker = &config.by_cert["spiffe://cluster.local/ns/agents/sa/research"];
        assert_eq!(worker.kinds.as_deref(), Some(&["research".to_owned()][..]));
        assert_eq!(config.tenants["acme"].max_active_tasks, Some(10000));
    }

    #[test]
    fn mistakes_are_refused_with_what_is_wrong() {
        let cases = [
            (
                "[[principal]]\nname = \"a\"\nroles = [\"operator\"]\ntoken_sha256 = \"HASH\"",
                "tenant is required",
            ),
            (
                "[[principal]]\nname = \"a\"\ntenant = \"t\"\nroles = [\"boss\"]\ntoken_sha256 = \"HASH\"",
                "unknown variant",
            ),
            (
                "[[principal]]\nname = \"a\"\ntenant = \"t\"\nroles = [\"viewer\"]",
                "token_sha256 or client_cert",
            ),
            (
                "[[principal]]\nname = \"a\"\ntenant = \"t\"\nroles = [\"viewer\"]\ntoken_sha256 = \"abc\"",
                "64 hex digits",
            ),
            (
                "[[principal]]\nname = \"a\"\ntenant = \"t\"\nroles = [\"viewer\"]\nkinds = [\"x\"]\ntoken_sha256 = \"HASH\"",
                "kinds are for worker",
            ),
            (
                "[[principal]]\nname = \"a\"\ntenant = \"t t\"\nroles = [\"viewer\"]\ntoken_sha256 = \"HASH\"",
                "must be 1 to 128",
            ),
            (
                "[[principal]]\nname = \"a\"\ntenant = \"t\"\nroles = [\"viewer\"]\ntoken_sha256 = \"HASH\"\n[[principal]]\nname = \"b\"\ntenant = \"t\"\nroles = [\"viewer\"]\ntoken_sha256 = \"HASH\"",
                "same token",
            ),
            (
                "[[principal]]\nname = \"a\"\ntenant = \"t\"\nroles = [\"viewer\"]\ntoken_sha256 = \"HASH\"\nextra = 1",
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(&text.replace("HASH", HASH)).err().expect(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
        let admin = parse(&format!(
            "[[principal]]\nname = \"ops\"\nroles = [\"admin\"]\ntoken_sha256 = \"{HASH}\""
        ));
        assert!(admin.is_ok(), "an admin needs no tenant");
    }
}
