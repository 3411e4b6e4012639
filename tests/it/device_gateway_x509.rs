//! X.509 client certificates at the device gateway (`client_auth: optional`), IoT Hub's
//! self-signed model: a device registered with a certificate's thumbprint connects with
//! Microsoft's SDK (`IoTHubDeviceClient.create_from_x509_certificate`) and no SAS token;
//! another certificate is refused. Certificates are made by rcgen; their thumbprints are
//! computed by the script, with Python's `hashlib`, not by weir.

use rcgen::{CertificateParams, DnType, KeyPair};
use weir::registry::{DevicePatch, DeviceSpec};

use crate::support::gateway::{TestGateway, json_lines};

/// `x509.py thumbprint CERT`: prints `{"sha1": HEX, "sha256": HEX}` (upper case, as the
/// Azure portal shows them). `x509.py send HOST DEVICE CERT KEY CA COUNT`: connects with
/// the certificate and sends COUNT messages; prints `{"sent": COUNT}` or `{"refused": …}`.
const X509: &str = r#"
import asyncio, hashlib, json, ssl, sys
from azure.iot.device.aio import IoTHubDeviceClient
from azure.iot.device import Message, X509

async def send(host, device, cert, key, ca_file, count):
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(cert_file=cert, key_file=key), hostname=host, device_id=device,
        server_verification_cert=open(ca_file).read(), connection_retry=False)
    try:
        await client.connect()
    except Exception as e:
        print(json.dumps({"refused": type(e).__name__}), flush=True)
        return
    for seq in range(int(count)):
        m = Message(json.dumps({"seq": seq}))
        m.content_type = "application/json"
        await client.send_message(m)
    print(json.dumps({"sent": int(count)}), flush=True)
    await client.shutdown()

if sys.argv[1] == "thumbprint":
    der = ssl.PEM_cert_to_DER_cert(open(sys.argv[2]).read())
    print(json.dumps({"sha1": hashlib.sha1(der).hexdigest().upper(),
                      "sha256": hashlib.sha256(der).hexdigest().upper()}), flush=True)
else:
    asyncio.run(send(*sys.argv[2:8]))
"#;

/// A self-signed certificate for `device` (its id as the common name, as IoT Hub's
/// tutorial makes them), written as `{device}.pem` and `{device}.key`; their paths.
fn certificate(gateway: &TestGateway, device: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, device);
    let cert = params.self_signed(&key).unwrap();
    let cert_path = gateway.dir.path().join(format!("{device}.pem"));
    let key_path = gateway.dir.path().join(format!("{device}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

async fn thumbprints(gateway: &TestGateway, cert: &str) -> serde_json::Value {
    let args = vec!["thumbprint".into(), cert.into()];
    json_lines(&gateway.python("x509.py", X509, args).await).remove(0)
}

fn register(gateway: &TestGateway, device: &str, thumbprint: &str) {
    gateway
        .registry
        .create(DeviceSpec {
            id: device.into(),
            fields: DevicePatch {
                x509_thumbprint: Some(thumbprint.into()),
                ..DevicePatch::default()
            },
        })
        .unwrap();
}

async fn send(
    gateway: &TestGateway,
    device: &str,
    (cert, key): &(String, String),
    count: usize,
) -> serde_json::Value {
    let args = vec![
        "send".into(),
        gateway.host.to_string(),
        device.into(),
        cert.clone(),
        key.clone(),
        gateway.ca.display().to_string(),
        count.to_string(),
    ];
    json_lines(&gateway.python("x509.py", X509, args).await).remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_connect_with_the_certificate_of_their_thumbprint_and_no_other() {
    let gateway = TestGateway::start("client_auth: optional");
    // One device recorded by SHA-1 thumbprint, one by SHA-256.
    let cam = certificate(&gateway, "cam-1");
    let door = certificate(&gateway, "door-1");
    let stranger = certificate(&gateway, "cam-2");
    let cam_prints = thumbprints(&gateway, &cam.0).await;
    let door_prints = thumbprints(&gateway, &door.0).await;
    register(&gateway, "cam-1", cam_prints["sha1"].as_str().unwrap());
    register(&gateway, "door-1", door_prints["sha256"].as_str().unwrap());

    assert_eq!(send(&gateway, "cam-1", &cam, 3).await["sent"], 3);
    assert_eq!(send(&gateway, "door-1", &door, 2).await["sent"], 2);
    let out = gateway.out();
    assert_eq!(out.len(), 5, "acknowledged telemetry is in the sink");
    assert_eq!(
        out.iter()
            .filter(|line| line["device_id"] == "cam-1")
            .count(),
        3
    );

    // Another certificate for cam-1, or door-1's for cam-1: refused, counted.
    let refused = send(&gateway, "cam-1", &stranger, 1).await;
    assert!(refused.get("refused").is_some(), "{refused}");
    let swapped = send(&gateway, "cam-1", &door, 1).await;
    assert!(swapped.get("refused").is_some(), "{swapped}");
    assert_eq!(
        gateway.by_reason("device_gateway_auth_failures_total", "bad_certificate"),
        2.0
    );
    // An unregistered device with a certificate is refused too.
    let unknown = send(&gateway, "cam-2", &stranger, 1).await;
    assert!(unknown.get("refused").is_some(), "{unknown}");
    assert_eq!(gateway.out().len(), 5);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_client_auth_a_certificate_authenticates_nobody() {
    let gateway = TestGateway::start("");
    let cam = certificate(&gateway, "cam-9");
    let prints = thumbprints(&gateway, &cam.0).await;
    register(&gateway, "cam-9", prints["sha1"].as_str().unwrap());
    let refused = send(&gateway, "cam-9", &cam, 1).await;
    assert!(refused.get("refused").is_some(), "{refused}");
    assert_eq!(
        gateway.by_reason("device_gateway_auth_failures_total", "missing_token"),
        1.0
    );
    gateway.stop().await;
}
