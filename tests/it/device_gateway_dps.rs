//! Provisioning through the device gateway, driven by Microsoft's `azure-iot-device`
//! SDK: `ProvisioningDeviceClient.create_from_symmetric_key` with a key derived from an
//! enrollment group (derived by the script, with Python's `hmac`, as Microsoft documents
//! it), then `IoTHubDeviceClient` to the hub it was assigned, sending telemetry.

use weir::registry::{GroupPatch, GroupSpec, Properties, Status};

use crate::support::gateway::{TestGateway, json_lines};

const SCOPE: &str = "0ne00DPS0A1";

/// `provision.py HOST SCOPE REGISTRATION_ID GROUP_KEY CA COUNT`: registers, prints
/// `{"status", "assigned_hub", "device_id"}` (or `{"refused": <error>}`), then, when
/// assigned, sends COUNT messages to the assigned hub and prints `{"sent": COUNT}`.
const PROVISION: &str = r#"
import asyncio, base64, hashlib, hmac, json, sys
from azure.iot.device.aio import IoTHubDeviceClient, ProvisioningDeviceClient
from azure.iot.device import Message

async def main():
    host, scope, registration_id, group_key, ca_file, count = sys.argv[1:7]
    ca = open(ca_file).read()
    key = base64.b64encode(hmac.new(base64.b64decode(group_key),
        registration_id.encode(), hashlib.sha256).digest()).decode()
    provisioning = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=host, registration_id=registration_id, id_scope=scope,
        symmetric_key=key, server_verification_cert=ca)
    try:
        result = await asyncio.wait_for(provisioning.register(), 60)
    except Exception as e:
        print(json.dumps({"refused": type(e).__name__}), flush=True)
        return
    state = result.registration_state
    print(json.dumps({"status": result.status, "assigned_hub": state.assigned_hub,
                      "device_id": state.device_id}), flush=True)
    if result.status != "assigned":
        return
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=state.assigned_hub, device_id=state.device_id,
        server_verification_cert=ca, connection_retry=False)
    await client.connect()
    for seq in range(int(count)):
        m = Message(json.dumps({"seq": seq}))
        m.content_type = "application/json"
        m.content_encoding = "utf-8"
        await client.send_message(m)
    print(json.dumps({"sent": int(count)}), flush=True)
    await client.shutdown()

asyncio.run(main())
"#;

fn start() -> TestGateway {
    TestGateway::start(&format!(
        "provisioning: {{ id_scope: {SCOPE}, assigned_hub: '{{host}}' }}"
    ))
}

/// An enrollment group `id` with tag `site`; its key. Devices of it do not register on
/// first contact (`auto_register: false`): provisioning is what registers them.
fn group(gateway: &TestGateway, id: &str, site: &str, status: Status) -> String {
    let mut tags = Properties::new();
    tags.insert("site".into(), site.into());
    let group = gateway
        .registry
        .create_group(GroupSpec {
            id: id.into(),
            fields: GroupPatch {
                tags: Some(tags),
                auto_register: Some(false),
                status: Some(status),
                ..GroupPatch::default()
            },
        })
        .unwrap();
    group.key.expose_str().to_owned()
}

async fn provision(
    gateway: &TestGateway,
    scope: &str,
    registration_id: &str,
    group_key: &str,
    count: usize,
) -> Vec<serde_json::Value> {
    let args = vec![
        gateway.host.to_string(),
        scope.to_owned(),
        registration_id.to_owned(),
        group_key.to_owned(),
        gateway.ca.display().to_string(),
        count.to_string(),
    ];
    json_lines(&gateway.python("provision.py", PROVISION, args).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_provisions_itself_with_a_derived_key_then_sends_telemetry() {
    let gateway = start();
    let key = group(&gateway, "pumps", "plant-9", Status::Enabled);
    let said = provision(&gateway, SCOPE, "pump-41", &key, 5).await;
    assert_eq!(
        said[0],
        serde_json::json!({"status": "assigned", "assigned_hub": gateway.host.to_string(),
                           "device_id": "pump-41"}),
        "{said:?}"
    );
    assert_eq!(said[1]["sent"], 5, "{said:?}");
    let device = gateway.registry.get("pump-41").expect("registered");
    assert_eq!(device.tags["site"], "plant-9");
    assert_eq!(device.enrollment_group.as_deref(), Some("pumps"));
    let out = gateway.out();
    assert_eq!(out.len(), 5, "acknowledged telemetry is in the sink");
    assert!(out.iter().all(|line| line["device_id"] == "pump-41"));

    // Registering again finds the same device: assigned, nothing new.
    let again = provision(&gateway, SCOPE, "pump-41", &key, 1).await;
    assert_eq!(again[0]["status"], "assigned", "{again:?}");
    assert_eq!(gateway.registry.len(), 1);
    assert_eq!(gateway.out().len(), 6);
    let assigned = gateway.metric(
        "device_gateway_registrations_total",
        &[r#"outcome="assigned""#],
    );
    assert_eq!(assigned, 2.0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_another_scope_or_a_disabled_group_is_not_provisioned() {
    let gateway = start();
    let key = group(&gateway, "fans", "plant-1", Status::Enabled);
    let disabled_key = group(&gateway, "old-fans", "plant-0", Status::Disabled);
    let auth_failures = |reason| gateway.by_reason("device_gateway_auth_failures_total", reason);

    // A key of no group: refused at CONNECT.
    let wrong = provision(
        &gateway,
        SCOPE,
        "fan-1",
        &weir::registry::keys::generate(),
        0,
    )
    .await;
    assert!(wrong[0].get("refused").is_some(), "{wrong:?}");
    assert_eq!(auth_failures("bad_signature"), 1.0);
    // The right key for another scope: refused at CONNECT too.
    let scope = provision(&gateway, "0ne00OTHER", "fan-1", &key, 0).await;
    assert!(scope[0].get("refused").is_some(), "{scope:?}");
    assert_eq!(auth_failures("bad_username"), 1.0);
    // A disabled group's key: the registration's status is `disabled`, which the SDK
    // reports as an error.
    let off = provision(&gateway, SCOPE, "fan-2", &disabled_key, 0).await;
    assert!(off[0].get("refused").is_some(), "{off:?}");
    let disabled = gateway.metric(
        "device_gateway_registrations_total",
        &[r#"outcome="disabled""#],
    );
    assert_eq!(disabled, 1.0);
    assert!(gateway.registry.is_empty(), "nothing was registered");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_provisioning_refuses_registrations() {
    let gateway = TestGateway::start("");
    let key = group(&gateway, "valves", "plant-2", Status::Enabled);
    let said = provision(&gateway, SCOPE, "valve-7", &key, 0).await;
    assert!(said[0].get("refused").is_some(), "{said:?}");
    assert_eq!(
        gateway.by_reason(
            "device_gateway_auth_failures_total",
            "provisioning_not_served"
        ),
        1.0
    );
    assert!(gateway.registry.is_empty());
    gateway.stop().await;
}

/// The next PUBLISH the gateway sends `eventloop`'s client, or `None` once the
/// connection ends (within 10 s).
async fn next_publish(eventloop: &mut rumqttc::EventLoop) -> Option<rumqttc::Publish> {
    let poll = async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))) => return Some(p),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), poll)
        .await
        .expect("the gateway answered or closed within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_the_services_errors_and_foreign_topics_close_the_connection() {
    use rumqttc::{AsyncClient, MqttOptions, PublishOptions, QoS, TlsConfiguration, Transport};
    use weir::registry::{keys, sas};

    let gateway = start();
    let group_key = group(&gateway, "probes", "lab", Status::Enabled);
    let derived = keys::derive(&keys::decode(&group_key).unwrap(), "probe-1");
    let expiry = jiff::Timestamp::now().as_second() as u64 + 3600;
    let token = sas::sign(
        &format!("{SCOPE}/registrations/probe-1"),
        &keys::decode(&derived).unwrap(),
        expiry,
    );
    let host = gateway.host.to_string();
    let mut options = MqttOptions::new("probe-1", (host.as_str(), 8883));
    options.set_keep_alive(30).set_credentials(
        format!("{SCOPE}/registrations/probe-1/api-version=2019-03-31"),
        token,
    );
    let tls = weir::tls::TlsConfig {
        ca_file: Some(gateway.ca.clone()),
        ..Default::default()
    }
    .client_config()
    .unwrap();
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (client, mut eventloop) = AsyncClient::builder(options).capacity(16).build();
    client
        .subscribe("$dps/registrations/res/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    // A body naming another registration: 400, nothing registered.
    client
        .publish(
            "$dps/registrations/PUT/iotdps-register/?$rid=1",
            br#"{"registrationId": "someone-else", "payload": null}"#.to_vec(),
            PublishOptions::at_least_once(),
        )
        .await
        .unwrap();
    let answer = next_publish(&mut eventloop).await.expect("an answer");
    assert_eq!(
        String::from_utf8_lossy(&answer.topic),
        "$dps/registrations/res/400/?$rid=1"
    );
    // Polling an operation that never was: 404.
    client
        .publish(
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=4.nope",
            b" ".to_vec(),
            PublishOptions::at_least_once(),
        )
        .await
        .unwrap();
    let answer = next_publish(&mut eventloop).await.expect("an answer");
    assert_eq!(
        String::from_utf8_lossy(&answer.topic),
        "$dps/registrations/res/404/?$rid=2"
    );
    // A registration connection has no hub topics: subscribing to one closes it.
    client
        .subscribe("devices/probe-1/messages/devicebound/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert!(next_publish(&mut eventloop).await.is_none());
    assert_eq!(
        gateway.metric("device_gateway_topic_violations_total", &[]),
        1.0
    );
    assert!(gateway.registry.is_empty());
    gateway.stop().await;
}
