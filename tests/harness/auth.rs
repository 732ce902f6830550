//! Auth for the tests: an `--auth-config` file written into a temporary directory, static
//! tokens (the file holds their SHA-256), and JWTs signed with an ES256 key made here whose
//! public half is the JWKS file the config names.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use reins_client::{Client, Credentials};
use sha2::{Digest, Sha256};

pub const JWT_ISSUER: &str = "https://issuer.test";
pub const JWT_AUDIENCE: &str = "reins";

/// The hex SHA-256 of a token, as `token_sha256` wants it.
pub fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// An auth config file and the JWT key its `[jwt]` section trusts.
pub struct AuthFile {
    dir: tempfile::TempDir,
    key: KeyPair,
}

impl AuthFile {
    /// A file with `body` (principals and tenants) and a `[jwt]` section trusting
    /// [`AuthFile::jwt`]'s tokens.
    pub fn new(body: &str) -> AuthFile {
        let file = AuthFile {
            dir: tempfile::tempdir().expect("temp dir"),
            key: KeyPair::generate().expect("ES256 key"),
        };
        let point = file.key.public_key_raw();
        // An uncompressed P-256 point: 0x04, x, y.
        let jwks = serde_json::json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "test",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]});
        std::fs::write(file.dir.path().join("jwks.json"), jwks.to_string()).expect("jwks");
        file.write(body);
        file
    }

    /// Replaces the principals and tenants (the server re-reads the file).
    pub fn write(&self, body: &str) {
        let text = format!(
            "{body}\n[jwt]\njwks_file = \"jwks.json\"\nissuer = \"{JWT_ISSUER}\"\naudience = \"{JWT_AUDIENCE}\"\n"
        );
        let temporary = self.dir.path().join("auth.toml.new");
        std::fs::write(&temporary, text).expect("write auth config");
        std::fs::rename(&temporary, self.path()).expect("rename auth config");
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("auth.toml")
    }

    /// A JWT for `sub` in `tenant` with `roles`, valid for an hour from `issued` seconds
    /// from now (negative: in the past).
    pub fn jwt(&self, sub: &str, tenant: Option<&str>, roles: &[&str], issued: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs() as i64;
        let mut claims = serde_json::json!({
            "sub": sub, "iss": JWT_ISSUER, "aud": JWT_AUDIENCE,
            "iat": now + issued, "nbf": now + issued, "exp": now + issued + 3600,
            "reins/roles": roles,
        });
        if let Some(tenant) = tenant {
            claims["reins/tenant"] = tenant.into();
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("test".to_owned());
        let key = EncodingKey::from_ec_pem(self.key.serialize_pem().as_bytes()).expect("key");
        jsonwebtoken::encode(&header, &claims, &key).expect("sign JWT")
    }
}

/// A client of `url` sending `token`.
pub async fn client_with_token(url: &str, token: &str) -> Client {
    Client::connect_with(url, &Credentials::new().token(token))
        .await
        .expect("connect")
}
