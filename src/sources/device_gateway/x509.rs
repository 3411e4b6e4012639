//! X.509 client certificates, as an IoT hub's "self-signed" (thumbprint) model takes
//! them: with `client_auth: optional` the TLS handshake asks every device for a
//! certificate (a device without one still connects, and uses a SAS token). A presented
//! certificate is not checked against any CA; the handshake proves the device holds its
//! private key, and the CONNECT is admitted only when the certificate's thumbprint
//! equals the device's `x509_thumbprint` in the registry ([`Thumbprints::matches`]).
//!
//! A hub records SHA-1 thumbprints and accepts SHA-256 ones too; so does weir: the
//! recorded hex (colons and case ignored) is compared, in constant time, with the
//! certificate's digest of the same length.
//!
//! Not done: the CA-signed model (a chain to a configured CA, the device id in the
//! subject), and the certificate's validity dates (a hub checks them; weir does not yet).

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ServerConfig;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::tls::{TlsConfig, provider};

/// Whether devices may authenticate with a client certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// The handshake asks for no certificate: SAS tokens only.
    #[default]
    None,
    /// The handshake asks for a certificate, which a device may present instead of a
    /// SAS token; it authenticates when its thumbprint is the device's `x509_thumbprint`.
    Optional,
}

/// The digests of a presented certificate.
#[derive(Clone, Debug)]
pub(super) struct Thumbprints {
    sha1: [u8; 20],
    sha256: [u8; 32],
}

impl Thumbprints {
    pub(super) fn of(der: &[u8]) -> Self {
        Self {
            sha1: Sha1::digest(der).into(),
            sha256: Sha256::digest(der).into(),
        }
    }

    /// Whether `recorded` (hex of a SHA-1 or SHA-256 thumbprint, colons and case ignored)
    /// is this certificate's.
    pub(super) fn matches(&self, recorded: &str) -> bool {
        let hex: String = recorded
            .chars()
            .filter(|c| !c.is_whitespace() && *c != ':')
            .collect();
        match hex::decode(hex) {
            Ok(bytes) if bytes.len() == 20 => bytes.ct_eq(&self.sha1).into(),
            Ok(bytes) if bytes.len() == 32 => bytes.ct_eq(&self.sha256).into(),
            _ => false,
        }
    }
}

/// The certificate the device of `connection` presented, if any.
pub(super) fn presented(connection: &rustls::CommonState) -> Option<Thumbprints> {
    let certificate = connection.peer_certificates()?.first()?;
    Some(Thumbprints::of(certificate.as_ref()))
}

/// The gateway's TLS server configuration: `tls`'s certificate, asking for client
/// certificates when `client_auth` says so.
pub(super) fn server_config(
    tls: &TlsConfig,
    client_auth: ClientAuth,
) -> anyhow::Result<ServerConfig> {
    let base = tls.server_config()?;
    let mut config = match client_auth {
        ClientAuth::None => (*base).clone(),
        ClientAuth::Optional => {
            if tls.ca_file.is_some() {
                anyhow::bail!(
                    "`client_auth: optional` matches certificates by thumbprint; `tls.ca_file` would require every device to present one"
                );
            }
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .with_client_cert_verifier(Arc::new(AnyCertificate(provider())))
                .with_cert_resolver(Arc::clone(&base.cert_resolver))
        }
    };
    // Device SDKs speak MQTT straight after the handshake: the `http/1.1` the shared
    // server configuration offers would refuse clients that ask for another protocol.
    config.alpn_protocols.clear();
    Ok(config)
}

/// Takes any client certificate (whose key signs the handshake): who it belongs to is
/// decided at CONNECT, by thumbprint.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ClientCertVerifier for AnyCertificate {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_match_in_either_digest_and_any_spelling() {
        let der = b"not really a certificate, but digests do not mind";
        let prints = Thumbprints::of(der);
        let sha1 = hex::encode(Sha1::digest(der));
        let sha256 = hex::encode(Sha256::digest(der));
        assert!(prints.matches(&sha1));
        assert!(prints.matches(&sha1.to_uppercase()));
        assert!(prints.matches(&sha256));
        let colons = sha1
            .as_bytes()
            .chunks(2)
            .map(|pair| std::str::from_utf8(pair).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert!(prints.matches(&colons));
        let other = Thumbprints::of(b"another certificate");
        assert!(!other.matches(&sha1));
        assert!(!other.matches(&sha256));
        assert!(!prints.matches(""));
        assert!(!prints.matches(&sha1[..38]));
        assert!(!prints.matches("zz"));
    }
}
