//! Authentication and authorization, in one place: [`AuthLayer`] (a tower layer around
//! every service) finds who is calling — a bearer token of the `--auth-config` file
//! (compared by SHA-256, in constant time), a JWT verified against the JWKS file, or the
//! client certificate's identity (mTLS) — checks the role the RPC needs ([`roles`]) and
//! hands the handlers a [`Caller`] in the request's extensions. Handlers never read
//! headers; they scope what they do to the caller's tenant.
//!
//! No credentials, or ones that name nobody → UNAUTHENTICATED (`UNAUTHENTICATED`); a
//! principal without the role → PERMISSION_DENIED (`ROLE_REQUIRED`). Health and
//! reflection are open. Without `--auth-config` every call is [`Caller::anonymous`]: one
//! tenant, `default`, every RPC allowed — the behaviour of a server without auth.
//!
//! The file (and the JWKS file it names) is re-read when it changes (`reload`); a file
//! that does not load leaves the previous config in force.

pub(crate) mod audit;
mod config;
mod jwt;
mod layer;
mod principal;
mod roles;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub(crate) use self::config::{AuthConfig, TenantQuotas};
pub(crate) use self::layer::AuthLayer;
pub(crate) use self::principal::Caller;
use self::principal::Principal;
use self::roles::Needs;
use crate::error::Error;
use crate::tls::ClientIdentity;

/// The auth config in force, reloadable. `None` inside: auth is off.
pub(crate) struct Auth {
    file: Option<PathBuf>,
    current: RwLock<Option<Arc<AuthConfig>>>,
}

impl Auth {
    /// Auth off.
    pub(crate) fn off() -> Arc<Auth> {
        Arc::new(Auth {
            file: None,
            current: RwLock::new(None),
        })
    }

    pub(crate) fn load(file: &Path) -> Result<Arc<Auth>, String> {
        let config = AuthConfig::load(file)?;
        Ok(Arc::new(Auth {
            file: Some(file.to_owned()),
            current: RwLock::new(Some(Arc::new(config))),
        }))
    }

    /// The files to watch for changes: the config and its JWKS file.
    pub(crate) fn files(&self) -> Vec<PathBuf> {
        let jwks = self.config().and_then(|config| config.jwks_file.clone());
        self.file.iter().cloned().chain(jwks).collect()
    }

    pub(crate) fn reload(&self) -> Result<(), String> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let config = AuthConfig::load(file)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(config));
        Ok(())
    }

    /// The config in force; `None` when auth is off.
    pub(crate) fn config(&self) -> Option<Arc<AuthConfig>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The caller of a call to `path`, or why it may not make it; `Ok(None)` for the
    /// open services (health, reflection).
    pub(crate) fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        client: Option<&ClientIdentity>,
    ) -> Result<Option<Caller>, Error> {
        let needed = match roles::needed_for(path) {
            Needs::Nothing => return Ok(None),
            Needs::Role(role) => role,
        };
        let Some(config) = self.config() else {
            return Ok(Some(Caller::anonymous()));
        };
        let principal = authenticate(&config, headers, client)?;
        if !principal.grants(needed) {
            return Err(Error::RoleRequired {
                principal: principal.name.to_string(),
                role: needed.name(),
                method: path.to_owned(),
            });
        }
        let mut caller = principal.caller();
        caller.quotas = config.tenants.get(&*caller.tenant).cloned();
        Ok(Some(caller))
    }
}

fn authenticate(
    config: &AuthConfig,
    headers: &http::HeaderMap,
    client: Option<&ClientIdentity>,
) -> Result<Arc<Principal>, Error> {
    let token = match headers.get(http::header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let text = value.to_str().unwrap_or_default();
            let token = text
                .strip_prefix("Bearer ")
                .or_else(|| text.strip_prefix("bearer "))
                .map(str::trim)
                .filter(|token| !token.is_empty());
            Some(token.ok_or_else(|| {
                Error::Unauthenticated("authorization must be `Bearer <token>`".to_owned())
            })?)
        }
    };
    if let Some(token) = token {
        return by_token(config, token);
    }
    if let Some(ClientIdentity(identity)) = client {
        return config.by_cert.get(&**identity).cloned().ok_or_else(|| {
            Error::Unauthenticated(format!(
                "the client certificate {} names no principal",
                crate::error::Echo(identity)
            ))
        });
    }
    Err(Error::Unauthenticated(
        "credentials required: an `authorization: Bearer <token>` header or a client certificate"
            .to_owned(),
    ))
}

fn by_token(config: &AuthConfig, token: &str) -> Result<Arc<Principal>, Error> {
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    // Every entry is compared, in constant time, so the time taken says nothing about
    // which (or whether one) matched.
    let mut found = None;
    for (known, principal) in &config.by_token {
        if bool::from(known.ct_eq(&hash)) {
            found = Some(principal);
        }
    }
    if let Some(principal) = found {
        return Ok(Arc::clone(principal));
    }
    match &config.jwt {
        Some(verifier) if jwt::looks_like_jwt(token) => verifier
            .verify(token)
            .map(Arc::new)
            .map_err(|why| Error::Unauthenticated(format!("invalid JWT: {why}"))),
        _ => Err(Error::Unauthenticated("unknown token".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(text: &str) -> Arc<Auth> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.toml");
        std::fs::write(&path, text).unwrap();
        Auth::load(&path).unwrap()
    }

    fn hash(token: &str) -> String {
        hex::encode(Sha256::digest(token))
    }

    fn bearer(token: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        headers
    }

    fn reason(result: Result<Option<Caller>, Error>) -> String {
        let status = tonic::Status::from(result.expect_err("refused"));
        use tonic_types::StatusExt;
        format!(
            "{:?} {}",
            status.code(),
            status.get_error_details().error_info().unwrap().reason
        )
    }

    #[test]
    fn tokens_certificates_and_roles_decide_who_may_call_what() {
        let auth = auth(&format!(
            r#"
            [[principal]]
            name = "alice"
            tenant = "acme"
            roles = ["viewer"]
            token_sha256 = "{}"
            [[principal]]
            name = "research"
            tenant = "acme"
            roles = ["worker"]
            kinds = ["research"]
            client_cert = "spiffe://cluster.local/research"
            "#,
            hash("alice-token")
        ));
        let check = "/reins.v1.TaskService/CheckTask";
        let start = "/reins.v1.TaskService/StartTask";
        let caller = auth
            .admit(check, &bearer("alice-token"), None)
            .unwrap()
            .unwrap();
        assert_eq!(&*caller.name, "alice");
        assert_eq!(&*caller.tenant, "acme");
        assert!(!caller.all_tenants);
        assert_eq!(
            reason(auth.admit(start, &bearer("alice-token"), None)),
            "PermissionDenied ROLE_REQUIRED"
        );
        assert_eq!(
            reason(auth.admit(check, &bearer("wrong"), None)),
            "Unauthenticated UNAUTHENTICATED"
        );
        assert_eq!(
            reason(auth.admit(check, &http::HeaderMap::new(), None)),
            "Unauthenticated UNAUTHENTICATED"
        );
        let identity = ClientIdentity("spiffe://cluster.local/research".into());
        let worker = auth
            .admit(
                "/reins.v1.WorkerService/Connect",
                &http::HeaderMap::new(),
                Some(&identity),
            )
            .unwrap()
            .unwrap();
        assert!(worker.check_kind("research").is_ok());
        assert!(worker.check_kind("other").is_err());
        assert_eq!(
            reason(auth.admit(check, &http::HeaderMap::new(), Some(&identity))),
            "PermissionDenied ROLE_REQUIRED"
        );
        let stranger = ClientIdentity("spiffe://elsewhere".into());
        assert_eq!(
            reason(auth.admit(check, &http::HeaderMap::new(), Some(&stranger))),
            "Unauthenticated UNAUTHENTICATED"
        );
        // Health and reflection are open.
        assert_eq!(
            auth.admit(
                "/grpc.health.v1.Health/Check",
                &http::HeaderMap::new(),
                None
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn without_a_config_everyone_is_the_anonymous_caller_of_the_default_tenant() {
        let auth = Auth::off();
        let caller = auth
            .admit(
                "/reins.v1.TaskService/StartTask",
                &http::HeaderMap::new(),
                None,
            )
            .unwrap()
            .unwrap();
        assert_eq!(caller, Caller::anonymous());
        assert_eq!(&*caller.tenant, principal::DEFAULT_TENANT);
    }

    #[test]
    fn a_reload_takes_a_valid_file_and_keeps_the_old_one_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.toml");
        let entry = |token: &str| {
            format!(
                "[[principal]]\nname = \"a\"\ntenant = \"t\"\nroles = [\"viewer\"]\ntoken_sha256 = \"{}\"\n",
                hash(token)
            )
        };
        std::fs::write(&path, entry("one")).unwrap();
        let auth = Auth::load(&path).unwrap();
        let check = "/reins.v1.TaskService/CheckTask";
        assert!(auth.admit(check, &bearer("one"), None).is_ok());
        std::fs::write(&path, entry("two")).unwrap();
        auth.reload().unwrap();
        assert!(auth.admit(check, &bearer("one"), None).is_err());
        assert!(auth.admit(check, &bearer("two"), None).is_ok());
        std::fs::write(&path, "not toml [").unwrap();
        assert!(auth.reload().is_err());
        assert!(
            auth.admit(check, &bearer("two"), None).is_ok(),
            "kept the previous config"
        );
    }
}
