//! [`Credentials`]: what a client presents to a server that authenticates — a bearer token
//! (sent as `authorization: Bearer …` on every call), the CA that signed the server's
//! certificate (for `https://` servers with a private CA), and a client certificate and
//! key for mutual TLS.

use std::path::Path;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tonic::{Request, Status};

use crate::Error;

/// Token and TLS material for [`crate::Client::connect_with`]. The default is none of them:
/// plaintext or TLS with the system's roots, no token.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    token: Option<String>,
    ca_cert: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Credentials {
    pub fn new() -> Credentials {
        Credentials::default()
    }

    /// A bearer token (a static token of the server's auth config, or a JWT).
    pub fn token(mut self, token: impl Into<String>) -> Credentials {
        self.token = Some(token.into());
        self
    }

    /// PEM CA certificates to trust for the server's certificate, instead of the system's.
    pub fn ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Credentials {
        self.ca_cert = Some(pem.into());
        self
    }

    /// A PEM client certificate chain and its PEM private key (mutual TLS).
    pub fn client_cert_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Credentials {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// Reads the files of `--ca-cert`, `--cert` and `--key` (each optional; a certificate
    /// needs its key).
    pub fn from_files(
        token: Option<String>,
        ca_cert: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Credentials, Error> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|err| Error::Credentials(format!("{}: {err}", path.display())))
        };
        let mut credentials = Credentials::default();
        if let Some(token) = token {
            credentials = credentials.token(token);
        }
        if let Some(ca) = ca_cert {
            credentials = credentials.ca_cert_pem(read(ca)?);
        }
        match (cert, key) {
            (Some(cert), Some(key)) => {
                credentials = credentials.client_cert_pem(read(cert)?, read(key)?);
            }
            (None, None) => {}
            _ => {
                return Err(Error::Credentials(
                    "a client certificate needs its key (--cert with --key)".to_owned(),
                ));
            }
        }
        Ok(credentials)
    }

    /// Whether any TLS setting was given, so that the connection must use TLS.
    pub(crate) fn wants_tls(&self) -> bool {
        self.ca_cert.is_some() || self.identity.is_some()
    }

    pub(crate) fn tls_config(&self) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new();
        match &self.ca_cert {
            Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(ca)),
            None => tls = tls.with_native_roots(),
        }
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        tls
    }

    pub(crate) fn interceptor(&self) -> Result<BearerToken, Error> {
        let value = match &self.token {
            None => None,
            Some(token) => Some(
                MetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| Error::Credentials("the token is not printable ASCII".into()))?,
            ),
        };
        Ok(BearerToken(value))
    }
}

/// Adds the `authorization` header to each call, when there is a token.
#[derive(Clone, Debug)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl BearerToken {
    pub(crate) fn none() -> BearerToken {
        BearerToken(None)
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
