//! The admin API over TLS, with the `tls` options of the `http` source: a certificate made
//! by the test, `weir devices --ca`, and client certificates when `ca_file` asks for them.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::pki::{self, Pki};
use crate::support::{Weir, data_dir_of, free_port, initial_admin_token, registry_pipeline};

fn client(pki: &Pki, with_certificate: bool) -> reqwest::Client {
    let tls = weir::tls::TlsConfig {
        ca_file: Some(pki.ca.clone()),
        cert_file: with_certificate.then(|| pki.client_cert.clone()),
        key_file: with_certificate.then(|| pki.client_key.clone()),
    };
    let config = tls.client_config().unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(rustls::ClientConfig::clone(&config))
        .build()
        .unwrap()
}

/// Starts weir with `api.tls: {tls}` and waits until `/ready` answers over TLS.
async fn start(dir: &Path, pki: &Pki, tls: &str) -> Weir {
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pipeline = registry_pipeline(dir, api, &format!("tls: {tls}"));
    let child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("run")
        .arg(&pipeline)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let data_dir = data_dir_of(dir, &pipeline);
    let mut weir = Weir {
        child,
        api,
        token: String::new(),
        data_dir,
    };
    let http = client(pki, true);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http
        .get(format!("https://127.0.0.1:{}/ready", api.port()))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "weir did not become ready over TLS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    weir.token = initial_admin_token(&weir.data_dir);
    weir
}

fn devices_cli(weir: &Weir, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("devices")
        .args(["--api", &format!("https://localhost:{}", weir.api.port())])
        .args(extra)
        .env("WEIR_TOKEN", &weir.token)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_tls_and_the_cli_trusts_the_given_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki::generate(dir.path());
    let tls = format!(
        "{{ cert_file: '{}', key_file: '{}' }}",
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let weir = start(dir.path(), &pki, &tls).await;
    let ca = pki.ca.to_str().unwrap();
    let added = devices_cli(&weir, &["--ca", ca, "add", "pump-1"]);
    assert!(added.status.success(), "{added:?}");
    let untrusted = devices_cli(&weir, &["list"]);
    assert!(
        !untrusted.status.success(),
        "without --ca the test CA is unknown"
    );
    let listed = devices_cli(&weir, &["--ca", ca, "list"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("pump-1"),
        "{listed:?}"
    );
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/ready", weir.api))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ca_file_the_api_asks_for_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki::generate(dir.path());
    let tls = format!(
        "{{ cert_file: '{}', key_file: '{}', ca_file: '{}' }}",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display()
    );
    let weir = start(dir.path(), &pki, &tls).await;
    let devices = format!("https://127.0.0.1:{}/v1/devices", weir.api.port());
    let refused = client(&pki, false)
        .get(&devices)
        .bearer_auth(&weir.token)
        .send()
        .await;
    assert!(refused.is_err(), "no client certificate: no connection");
    let served = client(&pki, true)
        .get(&devices)
        .bearer_auth(&weir.token)
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let anonymous = client(&pki, true).get(&devices).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "a certificate is no API token");
}
