//! The `http` source over TLS (server and mutual), and its per-device rate limit.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::{self, free_port, pipeline, pki};

fn tls_pipeline(port: u16, dir: &std::path::Path, tls: &str) -> String {
    format!(
        "api: {{ enabled: false }}\nsources:\n  devices:\n    type: http\n    listen: 127.0.0.1:{port}\n    tls: {tls}\nsinks:\n  out: {{ type: file, inputs: [devices], path: '{}/out.ndjson' }}\n",
        dir.display()
    )
}

/// POSTs one reading over TLS and returns the status code, or the handshake error.
async fn post_tls(
    port: u16,
    ca: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<u16, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(weir::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let body = json!({"temperature": 21}).to_string();
    let request = format!(
        "POST /v1/devices/d1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_and_requires_client_certificates_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki::generate(dir.path());
    let (plain, mutual) = (free_port(), free_port());
    let server = format!(
        "{{ cert_file: '{}', key_file: '{}' }}",
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let telemetry = Telemetry::new();
    let a = RunningTopology::start(
        &pipeline(&tls_pipeline(plain, dir.path(), &server)),
        &telemetry,
    )
    .unwrap();
    assert_eq!(post_tls(plain, &pki.ca, None).await, Ok(200));
    let refused = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{plain}/v1/devices/d1/messages"))
        .body("{}")
        .send()
        .await;
    assert!(
        refused.map(|r| r.status().as_u16() != 200).unwrap_or(true),
        "plain HTTP is not served on a TLS port"
    );

    let mutual_tls = format!(
        "{{ cert_file: '{}', key_file: '{}', ca_file: '{}' }}",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display()
    );
    let dir2 = tempfile::tempdir().unwrap();
    let b = RunningTopology::start(
        &pipeline(&tls_pipeline(mutual, dir2.path(), &mutual_tls)),
        &telemetry,
    )
    .unwrap();
    assert!(
        post_tls(mutual, &pki.ca, None).await.is_err(),
        "a client without a certificate is refused"
    );
    assert_eq!(
        post_tls(mutual, &pki.ca, Some((&pki.client_cert, &pki.client_key))).await,
        Ok(200)
    );
    let _ = a.stop(Duration::from_secs(5)).await;
    let _ = b.stop(Duration::from_secs(5)).await;
    assert_eq!(support::lines(&dir.path().join("out.ndjson")).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_file_stops_the_start_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let tls = format!(
        "{{ cert_file: '{}', key_file: '{}' }}",
        missing.display(),
        missing.display()
    );
    let error = RunningTopology::start(
        &pipeline(&tls_pipeline(free_port(), dir.path(), &tls)),
        &Telemetry::new(),
    )
    .err()
    .expect("start fails");
    let message = error.to_string();
    assert!(
        message.contains("component `devices` could not start") && message.contains("nope.pem"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_its_rate_limit_gets_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = format!(
        "api: {{ enabled: false }}\nsources:\n  devices: {{ type: http, listen: 127.0.0.1:{port}, rate_limit: {{ per_second: 2, burst: 5 }} }}\nsinks:\n  out: {{ type: file, inputs: [devices], path: '{}/out.ndjson' }}\n",
        dir.path().display()
    );
    let telemetry = Telemetry::new();
    let topology = RunningTopology::start(&pipeline(&text), &telemetry).unwrap();
    let client = reqwest::Client::new();
    let post = |device: &'static str, n: usize| {
        let body: Vec<_> = (0..n).map(|i| json!({"i": i})).collect();
        client
            .post(format!(
                "http://127.0.0.1:{port}/v1/devices/{device}/messages"
            ))
            .json(&body)
            .send()
    };
    assert_eq!(
        post("a", 5).await.unwrap().status(),
        200,
        "the burst is allowed"
    );
    let limited = post("a", 1).await.unwrap();
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    assert_eq!(
        post("b", 1).await.unwrap().status(),
        200,
        "another device has its own bucket"
    );
    assert_eq!(
        post("c", 6).await.unwrap().status(),
        429,
        "more than the burst at once"
    );
    let _ = topology.stop(Duration::from_secs(5)).await;
    let limited = support::metric(
        &telemetry,
        "component_errors_total",
        &[r#"error_type="rate_limited""#],
    );
    assert_eq!(limited, 2.0);
    assert_eq!(support::lines(&dir.path().join("out.ndjson")).len(), 6);
}
