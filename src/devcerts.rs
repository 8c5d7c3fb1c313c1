//! Throwaway certificates made with rcgen: `raft-kv dev --tls` writes a dev cluster's CAs and
//! certificates with these, and the TLS tests make good and bad ones. Not for production
//! (the README shows a setup with openssl): keys never leave the directory they are written to,
//! but nothing here rotates, revokes or protects them.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// What a certificate may be used for (its extended key usage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A server (serverAuth).
    Server,
    /// A client (clientAuth).
    Client,
    /// A member: server and client both (peer certificates, node certificates).
    ServerAndClient,
}

/// A calendar day, `(year, month, day)`.
pub type Day = (i32, u8, u8);

/// A certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// A certificate authority that can sign certificates.
pub struct Authority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

fn rcgen_error(e: rcgen::Error) -> String {
    format!("cannot make a certificate: {e}")
}

impl Authority {
    /// A fresh self-signed CA named `common_name` (ECDSA P-256).
    pub fn new(common_name: &str) -> Result<Authority, String> {
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(rcgen_error)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM (what `--trusted-ca-file`, `--peer-trusted-ca-file` and
    /// `--cacert` read).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `common_name`, valid for `names` (DNS names or IP addresses) and
    /// `usage`, for the usual span (now until 4096).
    pub fn issue(&self, common_name: &str, names: &[&str], usage: Usage) -> Result<Issued, String> {
        self.issue_with(common_name, names, usage, None)
    }

    /// A certificate valid only from `not_before` to `not_after` (`(year, month, day)` each):
    /// the tests' expired certificate.
    pub fn issue_valid_between(
        &self,
        common_name: &str,
        names: &[&str],
        usage: Usage,
        not_before: Day,
        not_after: Day,
    ) -> Result<Issued, String> {
        self.issue_with(common_name, names, usage, Some((not_before, not_after)))
    }

    fn issue_with(
        &self,
        common_name: &str,
        names: &[&str],
        usage: Usage,
        validity: Option<(Day, Day)>,
    ) -> Result<Issued, String> {
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).map_err(rcgen_error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        if let Some(((y0, m0, d0), (y1, m1, d1))) = validity {
            params.not_before = rcgen::date_time_ymd(y0, m0, d0);
            params.not_after = rcgen::date_time_ymd(y1, m1, d1);
        }
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_error)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
