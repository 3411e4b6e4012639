use serde_json::json;

use super::*;

const NULL: &Value = &Value::Null;

const SECOND: Duration = Duration::from_secs(1);

/// A connection that answers every method request with status 200 and the request's
/// payload, as `rid`+1 would be a stray.
fn echo(sessions: &Arc<DeviceSessions>, mut requests: mpsc::Receiver<ToDevice>, device: &str) {
    let (sessions, device) = (Arc::clone(sessions), device.to_owned());
    tokio::spawn(async move {
        while let Some(request) = requests.recv().await {
            if let ToDevice::Method { rid, payload, .. } = request {
                assert!(!sessions.answer(&device, &(rid + 1000).to_string(), 500, b""));
                assert!(sessions.answer(&device, &rid.to_string(), 200, &payload));
            }
        }
    });
}

#[tokio::test]
async fn a_call_reaches_the_subscribed_connection_and_returns_its_answer() {
    let sessions = Arc::new(DeviceSessions::new());
    let (registration, requests) = sessions.register("d1", "gw".into());
    echo(&sessions, requests, "d1");
    // Connected but not subscribed: not reachable.
    let call = sessions.call("d1", "m", NULL, SECOND, Duration::ZERO);
    assert_eq!(call.await, Err(CallError::NotConnected));
    registration.set(Subscription::Methods, true);
    let answer = sessions
        .call("d1", "m", &json!({"a": [1]}), SECOND, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.payload, json!({"a": [1]}));
    drop(registration);
    let call = sessions.call("d1", "m", NULL, SECOND, Duration::ZERO);
    assert_eq!(call.await, Err(CallError::NotConnected));
}

#[tokio::test]
async fn a_call_waits_up_to_connect_timeout_for_the_device() {
    let sessions = Arc::new(DeviceSessions::new());
    let later = Arc::clone(&sessions);
    let device = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (registration, requests) = later.register("d2", "gw".into());
        echo(&later, requests, "d2");
        registration.set(Subscription::Methods, true);
        registration
    });
    let answer = sessions
        .call("d2", "m", &json!("x"), SECOND, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(answer.payload, json!("x"));
    drop(device.await.unwrap());
}

#[tokio::test]
async fn silence_times_out_and_a_disconnect_ends_the_call() {
    let sessions = Arc::new(DeviceSessions::new());
    let (registration, mut requests) = sessions.register("d3", "gw".into());
    registration.set(Subscription::Methods, true);
    let silent = sessions.call("d3", "m", NULL, Duration::from_millis(50), Duration::ZERO);
    assert_eq!(silent.await, Err(CallError::Timeout));
    let Some(ToDevice::Method { rid, .. }) = requests.recv().await else {
        panic!("the request went out");
    };
    assert!(
        !sessions.answer("d3", &rid.to_string(), 200, b""),
        "too late"
    );

    let call = sessions.call("d3", "m", NULL, Duration::from_secs(30), Duration::ZERO);
    let gone = async {
        requests.recv().await;
        drop(registration);
    };
    let (result, ()) = tokio::join!(call, gone);
    assert_eq!(result, Err(CallError::Disconnected));
}

#[tokio::test]
async fn answers_of_another_device_are_ignored() {
    let sessions = Arc::new(DeviceSessions::new());
    let (registration, mut requests) = sessions.register("d4", "gw".into());
    registration.set(Subscription::Methods, true);
    let call = sessions.call("d4", "m", NULL, Duration::from_millis(300), Duration::ZERO);
    let forge = async {
        let Some(ToDevice::Method { rid, .. }) = requests.recv().await else {
            panic!("the request went out");
        };
        assert!(!sessions.answer("intruder", &rid.to_string(), 200, b"{}"));
        assert!(!sessions.answer("d4", "not-a-number", 200, b"{}"));
        assert!(sessions.answer("d4", &rid.to_string(), 201, b"plain text"));
    };
    let (result, ()) = tokio::join!(call, forge);
    assert_eq!(
        result,
        Ok(MethodAnswer {
            status: 201,
            payload: json!("plain text")
        })
    );
}

#[tokio::test]
async fn desired_changes_go_to_subscribed_devices_of_their_gateway_only() {
    let sessions = Arc::new(DeviceSessions::new());
    let (registration, mut requests) = sessions.register("d5", "gw-a".into());
    assert!(
        !sessions.push_desired("gw-a", "d5", 2, b"{}".to_vec()),
        "not subscribed"
    );
    registration.set(Subscription::Desired, true);
    assert!(
        !sessions.push_desired("gw-b", "d5", 2, b"{}".to_vec()),
        "another gateway"
    );
    assert!(sessions.push_desired("gw-a", "d5", 2, b"{\"$version\":2}".to_vec()));
    assert_eq!(
        requests.recv().await,
        Some(ToDevice::Desired {
            version: 2,
            patch: b"{\"$version\":2}".to_vec()
        })
    );
    // A newer connection takes the device; the old registration leaving does not remove it.
    let (newer, _newer_requests) = sessions.register("d5", "gw-a".into());
    drop(registration);
    newer.set(Subscription::Desired, true);
    assert!(sessions.is_subscribed("d5", Subscription::Desired));
}
