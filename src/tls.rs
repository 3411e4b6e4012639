//! TLS options, shared by every component that serves or connects over TLS.
//!
//! Pure-Rust TLS (rustls) with the aws-lc-rs provider, chosen explicitly per configuration
//! rather than as a process-wide default, so that the crates in the graph that enable other
//! providers cannot make a connection fail at run time. Certificates and keys are PEM files,
//! read when the component is built: a missing or malformed file fails the start (or rolls
//! a reload back) with the file's name.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::FieldProblem;

pub use crate::config::TlsConfig;

impl TlsConfig {
    /// Problems with the options of a TLS server (`field` is where `tls` sits).
    pub fn check_server(&self, field: &str) -> Vec<FieldProblem> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), Some(_)) => Vec::new(),
            _ => vec![FieldProblem::at(
                [field],
                "a TLS server needs `cert_file` and `key_file`",
            )],
        }
    }

    /// A rustls server configuration from the files.
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let (Some(cert_file), Some(key_file)) = (&self.cert_file, &self.key_file) else {
            anyhow::bail!("a TLS server needs `cert_file` and `key_file`");
        };
        let chain = certificates(cert_file)?;
        let key = PrivateKeyDer::from_pem_file(key_file)
            .with_context(|| format!("cannot read a private key from {}", key_file.display()))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = match &self.ca_file {
            Some(ca_file) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(ca_file)?),
                    provider(),
                )
                .build()
                .with_context(|| {
                    format!("cannot use the CA certificates in {}", ca_file.display())
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).with_context(|| {
            format!(
                "{} and {} do not form a usable certificate and key",
                cert_file.display(),
                key_file.display()
            )
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl TlsConfig {
    /// A rustls client configuration: servers are trusted if `ca_file` (else the system's
    /// roots) signed them; `cert_file`/`key_file` are presented for mutual TLS.
    pub fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let roots = match &self.ca_file {
            Some(ca_file) => roots(ca_file)?,
            None => {
                let mut roots = rustls::RootCertStore::empty();
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
                roots
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match (&self.cert_file, &self.key_file) {
            (Some(cert_file), Some(key_file)) => {
                let key = PrivateKeyDer::from_pem_file(key_file).with_context(|| {
                    format!("cannot read a private key from {}", key_file.display())
                })?;
                builder
                    .with_client_auth_cert(certificates(cert_file)?, key)
                    .with_context(|| {
                        format!(
                            "{} and {} do not form a usable certificate and key",
                            cert_file.display(),
                            key_file.display()
                        )
                    })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => anyhow::bail!("mutual TLS needs both `cert_file` and `key_file`"),
        };
        Ok(Arc::new(config))
    }
}

/// Serves `router` over TLS on `listener` until `shutdown`, then stops accepting and lets
/// the requests in flight finish. Handlers can read the caller's `ConnectInfo<SocketAddr>`.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: axum::Router,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stopper.graceful_shutdown(None);
    });
    axum_server::from_tcp_rustls(
        listener.into_std()?,
        axum_server::tls_rustls::RustlsConfig::from_config(tls),
    )?
    .handle(handle)
    .serve(router.into_make_service_with_connect_info::<std::net::SocketAddr>())
    .await
}

/// Makes aws-lc-rs the process-wide rustls provider, for libraries that build their TLS
/// configuration from the default (lapin does). Several providers are compiled in, so
/// without this those libraries could not choose one. Calling it again does nothing.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The crypto provider of every TLS configuration weir builds.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} holds a malformed certificate", path.display()))?;
    if certificates.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certificates)
}

fn roots(path: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates(path)? {
        roots.add(certificate).with_context(|| {
            format!(
                "{} holds a CA certificate rustls cannot use",
                path.display()
            )
        })?;
    }
    Ok(roots)
}
