//! Bearer JWTs (Kubernetes projected service-account tokens, an OIDC provider's tokens),
//! verified with `jsonwebtoken` against the keys of a JWKS file: RS256 or ES256 only (no
//! `none`, no HMAC, so a public key can never be used as a shared secret), `exp`
//! required, `nbf`, `iss` and `aud` checked when configured, 60 s of clock leeway. The
//! principal is the token's `sub`, its tenant, roles and kinds come from the configured
//! claims (roles and kinds: an array of strings or one space-separated string).

use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::config::{JwtEntry, check_tenant_name};
use super::principal::Principal;
use super::roles::Role;
use crate::limits::MAX_PRINCIPAL_BYTES;

pub(crate) struct JwtVerifier {
    entry: JwtEntry,
    keys: Vec<Key>,
}

struct Key {
    id: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Whether `token` has the shape of a JWT (three base64url parts), rather than an opaque
/// static token.
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

impl JwtVerifier {
    pub(super) fn load(entry: JwtEntry, base: &Path) -> Result<JwtVerifier, String> {
        let path = base.join(&entry.jwks_file);
        let text =
            std::fs::read_to_string(&path).map_err(|err| format!("{}: {err}", path.display()))?;
        let set: JwkSet =
            serde_json::from_str(&text).map_err(|err| format!("{}: {err}", path.display()))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let algorithm = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                // Neither RS256 nor ES256: not a key this server verifies with.
                _ => continue,
            };
            let key =
                DecodingKey::from_jwk(jwk).map_err(|err| format!("{}: {err}", path.display()))?;
            keys.push(Key {
                id: jwk.common.key_id.clone(),
                algorithm,
                key,
            });
        }
        if keys.is_empty() {
            return Err(format!("{}: no RS256 or ES256 key", path.display()));
        }
        Ok(JwtVerifier { entry, keys })
    }

    /// The principal a valid token names; why not, otherwise.
    pub(crate) fn verify(&self, token: &str) -> Result<Principal, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|err| err.to_string())?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(format!("JWT algorithm {:?} is not accepted", header.alg));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        if let Some(issuer) = &self.entry.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &self.entry.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        let candidates = self.keys.iter().filter(|key| {
            key.algorithm == header.alg
                && (header.kid.is_none() || key.id.is_none() || key.id == header.kid)
        });
        let mut last = "no key of the JWKS matches the token".to_owned();
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return self.principal(&data.claims),
                Err(err) => last = err.to_string(),
            }
        }
        Err(last)
    }

    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, String> {
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if subject.is_empty() || subject.len() > MAX_PRINCIPAL_BYTES {
            return Err(format!(
                "the JWT's sub must be 1 to {MAX_PRINCIPAL_BYTES} bytes"
            ));
        }
        let roles = strings(claims.get(&self.entry.roles_claim))
            .iter()
            .map(|role| {
                Role::parse(role).ok_or_else(|| format!("unknown role {role:?} in the JWT"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if roles.is_empty() {
            return Err(format!("the JWT has no roles ({})", self.entry.roles_claim));
        }
        let tenant = match claims.get(&self.entry.tenant_claim).and_then(Value::as_str) {
            Some(tenant) => {
                check_tenant_name(tenant)?;
                Some(Arc::from(tenant))
            }
            None if roles.contains(&Role::Admin) => None,
            None => {
                return Err(format!(
                    "the JWT names no tenant ({})",
                    self.entry.tenant_claim
                ));
            }
        };
        let kinds = claims
            .get(&self.entry.kinds_claim)
            .map(|kinds| strings(Some(kinds)).into());
        Ok(Principal {
            name: subject.into(),
            tenant,
            roles,
            kinds,
        })
    }
}

fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(text)) => text.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
