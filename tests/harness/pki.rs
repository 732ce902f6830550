//! Certificates made in the test (rcgen): a CA, a server certificate for `localhost` and
//! 127.0.0.1, and client certificates naming an identity, written as PEM files into a
//! temporary directory for `reinsd --tls-cert/--tls-key/--tls-client-ca` and for clients.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use reins_client::{Client, Credentials};

/// A certificate authority and the directory its files go to.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    dir: tempfile::TempDir,
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let pki = Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        std::fs::write(pki.ca(), &pki.ca_pem).expect("write CA");
        pki
    }

    /// The CA certificate's PEM file.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A server certificate for `localhost` and 127.0.0.1, files named after `name`.
    pub fn server(&self, name: &str) -> CertFiles {
        self.issue(
            name,
            vec![
                SanType::DnsName("localhost".try_into().expect("dns name")),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            "reinsd",
        )
    }

    /// A client certificate whose identity is the URI SAN `uri`.
    pub fn client_uri(&self, name: &str, uri: &str) -> CertFiles {
        self.issue(name, vec![SanType::URI(uri.try_into().expect("uri"))], name)
    }

    fn issue(&self, name: &str, sans: Vec<SanType>, cn: &str) -> CertFiles {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        let files = CertFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}-key.pem")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl CertFiles {
    /// Copies both files over `to`'s, as a rotation does.
    pub fn install_as(&self, to: &CertFiles) {
        // Write to a temporary name and rename, so the server never reads half a file.
        for (from, to) in [(&self.cert, &to.cert), (&self.key, &to.key)] {
            let temporary = to.with_extension("new");
            std::fs::copy(from, &temporary).expect("copy");
            std::fs::rename(&temporary, to).expect("rename");
        }
    }
}

/// Credentials trusting `pki`'s CA, with the client certificate `client` if given.
pub fn credentials(pki: &Pki, client: Option<&CertFiles>) -> Credentials {
    Credentials::from_files(
        None,
        Some(&pki.ca()),
        client.map(|c| c.cert.as_path()),
        client.map(|c| c.key.as_path()),
    )
    .expect("credentials")
}

/// A client of a TLS server at `address`, trusting `pki`.
pub async fn tls_client(
    address: &str,
    credentials: &Credentials,
) -> Result<Client, reins_client::Error> {
    Client::connect_with(format!("https://{address}"), credentials).await
}
