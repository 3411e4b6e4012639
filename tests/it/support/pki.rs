//! Certificates made at test time: a CA, a server certificate for localhost, a client one.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub fn generate(dir: &Path) -> Pki {
    generate_for(dir, &["localhost", "127.0.0.1"])
}

/// As [`generate`], with a server certificate for `names` (host names or IP addresses).
pub fn generate_for(dir: &Path, names: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "weir test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |names: Vec<String>, name: &str| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    };
    let names = names.iter().map(|n| n.to_string()).collect();
    let (server_cert, server_key) = leaf(names, "localhost");
    let (client_cert, client_key) = leaf(vec!["device-1".into()], "device-1");

    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    };
    Pki {
        ca: write("ca.pem", &ca_cert.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
    }
}

/// A TLS endpoint in front of a local plain-text service on `upstream`: each connection is
/// terminated with the test server certificate (requiring a client certificate signed by
/// the test CA when asked) and forwarded. Returns the endpoint's port.
pub async fn tls_proxy(pki: &Pki, require_client_certificate: bool, upstream: u16) -> u16 {
    let tls = weir::tls::TlsConfig {
        cert_file: Some(pki.server_cert.clone()),
        key_file: Some(pki.server_key.clone()),
        ca_file: require_client_certificate.then(|| pki.ca.clone()),
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config().expect("server TLS config"));
    let port = super::free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut client) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut service) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut service).await;
            });
        }
    });
    port
}
