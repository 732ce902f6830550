//! JWT verification against a JWKS of an ES256 key (made here) and an RS256 key (a fixed
//! test key, `test-rsa-key.pem`, used nowhere else): the claims every token must pass.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::*;

const RSA_KEY: &str = include_str!("test-rsa-key.pem");
const RSA_N: &str = "vPpNQuMZXBz9Ys4oQ6mpeFr1OiCAL8joPu-2v4z7ZD4LUcLuhixWfLqQ2jsyXyx8oD7kSOCbEpn8Y1SRwaSEEpRTEXnctQDB0Q8Q2wQeIb1Xx0jtC1UZESGZy2Myg8BdOAEjogpgkLCSqGhyBXkPDUWuMzvF-Cg6WS5ekOFi7E3UEn4CEClPv0yPSalxiVUzgidx6aImbD9PsXxHALUQGF7HakCyncLITuoz6sg8-rXNZyNIzQ8E8mswuJ8LvZ39mFre6aeIzd2AY3EHfOU_pcG-6R2-ZeqAKziYZGJVod5HR1ImTfA3Op3pTKkftZOF5eeed7Q6n-jnxgDvR-u61w";

struct Fixture {
    verifier: JwtVerifier,
    ec: rcgen::KeyPair,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let ec = rcgen::KeyPair::generate().unwrap();
    let point = ec.public_key_raw();
    let jwks = json!({ "keys": [
        { "kty": "EC", "crv": "P-256", "kid": "ec", "alg": "ES256",
          "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]) },
        { "kty": "RSA", "kid": "rsa", "alg": "RS256", "n": RSA_N, "e": "AQAB" },
    ]});
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
    let entry: JwtEntry = toml::from_str(
        "jwks_file = \"jwks.json\"\nissuer = \"https://issuer\"\naudience = \"reins\"",
    )
    .unwrap();
    Fixture {
        verifier: JwtVerifier::load(entry, dir.path()).unwrap(),
        ec,
        _dir: dir,
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims() -> Value {
    json!({
        "sub": "carol", "iss": "https://issuer", "aud": "reins",
        "nbf": now() - 10, "exp": now() + 600,
        "reins/tenant": "acme", "reins/roles": ["operator"], "reins/kinds": "research other",
    })
}

impl Fixture {
    fn es256(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("ec".into());
        let key = EncodingKey::from_ec_pem(self.ec.serialize_pem().as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn rs256(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa".into());
        let key = EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }
}

#[test]
fn valid_es256_and_rs256_tokens_name_their_principal() {
    let fixture = fixture();
    for token in [fixture.es256(&claims()), fixture.rs256(&claims())] {
        let principal = fixture.verifier.verify(&token).unwrap();
        assert_eq!(&*principal.name, "carol");
        assert_eq!(principal.tenant.as_deref(), Some("acme"));
        assert_eq!(principal.roles, vec![Role::Operator]);
        assert_eq!(
            principal.kinds.as_deref(),
            Some(&["research".to_owned(), "other".to_owned()][..])
        );
    }
}

#[test]
fn exp_nbf_iss_aud_and_the_algorithm_are_checked() {
    let fixture = fixture();
    let with = |key: &str, value: Value| {
        let mut claims = claims();
        claims[key] = value;
        claims
    };
    let refused = [
        ("expired", fixture.es256(&with("exp", json!(now() - 3600)))),
        (
            "not yet valid",
            fixture.es256(&with("nbf", json!(now() + 3600))),
        ),
        (
            "another issuer",
            fixture.es256(&with("iss", json!("https://elsewhere"))),
        ),
        (
            "another audience",
            fixture.rs256(&with("aud", json!("other"))),
        ),
        (
            "no tenant",
            fixture.es256(&with("reins/tenant", Value::Null)),
        ),
        (
            "an unknown role",
            fixture.es256(&with("reins/roles", json!(["boss"]))),
        ),
        ("no roles", fixture.es256(&with("reins/roles", json!([])))),
    ];
    for (what, token) in refused {
        assert!(
            fixture.verifier.verify(&token).is_err(),
            "{what} was accepted"
        );
    }
    // HS256 signed with the RSA modulus as a shared secret: the classic key confusion.
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(RSA_N.as_bytes()),
    )
    .unwrap();
    assert!(
        fixture
            .verifier
            .verify(&hs)
            .unwrap_err()
            .contains("not accepted")
    );
    // A token signed by a key outside the JWKS.
    let stranger = Fixture {
        ec: rcgen::KeyPair::generate().unwrap(),
        ..fixture
    };
    assert!(
        stranger
            .verifier
            .verify(&stranger.es256(&claims()))
            .is_err()
    );
}
