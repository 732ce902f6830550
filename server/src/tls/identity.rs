//! The identity of a client certificate, by which the auth config names an mTLS principal
//! (`client_cert = "spiffe://…"`): its first URI SAN (a SPIFFE id, as meshes issue), else
//! its first DNS SAN, else its subject's common name.

use std::sync::Arc;

use x509_parser::extensions::GeneralName;

/// The verified identity of the client certificate of the connection a request came on;
/// in the request's extensions when the client presented one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClientIdentity(pub Arc<str>);

/// The identity of a DER certificate; `None` when it names none (or does not parse, which
/// cannot happen after rustls verified it).
pub(crate) fn of_certificate(der: &[u8]) -> Option<ClientIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| san.value.general_names.clone())
        .unwrap_or_default();
    let uri = names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let dns = || {
        names.iter().find_map(|name| match name {
            GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        })
    };
    let common_name = || {
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
    };
    uri.or_else(dns)
        .or_else(common_name)
        .map(|name| ClientIdentity(name.into()))
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    use super::*;

    fn certificate(sans: Vec<SanType>, cn: Option<&str>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn identity(der: &[u8]) -> Option<String> {
        of_certificate(der).map(|id| id.0.to_string())
    }

    #[test]
    fn the_uri_san_comes_first_then_the_dns_san_then_the_common_name() {
        let uri = "spiffe://cluster.local/ns/agents/sa/research";
        let all = certificate(
            vec![
                SanType::DnsName("worker.example".try_into().unwrap()),
                SanType::URI(uri.try_into().unwrap()),
            ],
            Some("cn-name"),
        );
        assert_eq!(identity(&all).as_deref(), Some(uri));
        let dns = certificate(
            vec![SanType::DnsName("worker.example".try_into().unwrap())],
            Some("cn-name"),
        );
        assert_eq!(identity(&dns).as_deref(), Some("worker.example"));
        let cn = certificate(vec![], Some("cn-name"));
        assert_eq!(identity(&cn).as_deref(), Some("cn-name"));
        assert_eq!(identity(&certificate(vec![], None)), None);
        assert_eq!(identity(b"not a certificate"), None);
    }
}
