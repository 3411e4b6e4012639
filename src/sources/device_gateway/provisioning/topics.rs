//! The provisioning service's MQTT topics: the two requests a device publishes, the one
//! filter it subscribes to, and the topic each answer goes out on.

use percent_encoding::utf8_percent_encode;

// The SDKs split an answer topic at `$`: the bag's encoding encodes a `$` in a request id.
use super::super::topics::{BAG, property_bag};

/// The filter a registering device subscribes to for its answers.
pub(super) const RESPONSES: &str = "$dps/registrations/res/#";

const REGISTER: &str = "$dps/registrations/PUT/iotdps-register/";
const OPERATION_STATUS: &str = "$dps/registrations/GET/iotdps-get-operationstatus/";

/// A device's request, by the topic it published on.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Request {
    /// `$dps/registrations/PUT/iotdps-register/?$rid={rid}`: register me.
    Register { rid: String },
    /// `$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={id}`:
    /// how is my registration going.
    OperationStatus { rid: String, operation_id: String },
}

/// The request `topic` makes, or `None` for a topic the provisioning service has not.
pub(super) fn request(topic: &str) -> Option<Request> {
    let (path, query) = topic.split_once('?')?;
    let params = property_bag(query);
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let rid = param("$rid").filter(|rid| !rid.is_empty())?;
    match path.strip_suffix('/').unwrap_or(path) {
        p if p == REGISTER.trim_end_matches('/') => Some(Request::Register { rid }),
        p if p == OPERATION_STATUS.trim_end_matches('/') => {
            let operation_id = param("operationId").filter(|id| !id.is_empty())?;
            Some(Request::OperationStatus { rid, operation_id })
        }
        _ => None,
    }
}

/// Whether a registering device may subscribe to `filter`: only to its answers.
pub(super) fn may_subscribe(filter: &str) -> bool {
    filter == RESPONSES
}

/// The topic an answer with HTTP-like `status` to request `rid` goes out on:
/// `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={seconds}]`.
pub(super) fn response(status: u16, rid: &str, retry_after: Option<u32>) -> String {
    let rid = utf8_percent_encode(rid, BAG);
    match retry_after {
        Some(seconds) => {
            format!("$dps/registrations/res/{status}/?$rid={rid}&retry-after={seconds}")
        }
        None => format!("$dps/registrations/res/{status}/?$rid={rid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdks_requests_are_recognised() {
        // As azure-iot-device 2.14 writes them (`urllib.parse.quote(…, safe="")`).
        assert_eq!(
            request("$dps/registrations/PUT/iotdps-register/?$rid=6f1b2c3d"),
            Some(Request::Register {
                rid: "6f1b2c3d".into()
            })
        );
        assert_eq!(
            request(
                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=a%20b&operationId=4.abc%2F1"
            ),
            Some(Request::OperationStatus {
                rid: "a b".into(),
                operation_id: "4.abc/1".into()
            })
        );
        // Without the trailing slash, as some SDKs write it.
        assert_eq!(
            request("$dps/registrations/PUT/iotdps-register?$rid=1"),
            Some(Request::Register { rid: "1".into() })
        );
    }

    #[test]
    fn other_topics_are_no_requests() {
        for topic in [
            "$dps/registrations/PUT/iotdps-register/",
            "$dps/registrations/PUT/iotdps-register/?$rid=",
            "$dps/registrations/PUT/iotdps-register/?rid=1",
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1",
            "$dps/registrations/PUT/other/?$rid=1",
            "$dps/registrations/res/200/?$rid=1",
            "devices/d1/messages/events/?$rid=1",
            "$iothub/twin/GET/?$rid=1",
        ] {
            assert_eq!(request(topic), None, "{topic}");
        }
    }

    #[test]
    fn answers_parse_as_the_sdk_parses_them() {
        let topic = response(202, "r$1&x", Some(3));
        assert_eq!(
            topic,
            "$dps/registrations/res/202/?$rid=r%241%26x&retry-after=3"
        );
        // The SDK splits at `$`: exactly two, the status is the fourth path segment.
        let parts: Vec<&str> = topic.split('$').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1].split('/').nth(3), Some("202"));
        assert_eq!(
            property_bag(parts[2]),
            vec![
                ("rid".to_owned(), "r$1&x".to_owned()),
                ("retry-after".to_owned(), "3".to_owned())
            ]
        );
        assert_eq!(
            response(200, "7", None),
            "$dps/registrations/res/200/?$rid=7"
        );
    }

    #[test]
    fn only_the_answers_may_be_subscribed() {
        assert!(may_subscribe("$dps/registrations/res/#"));
        assert!(!may_subscribe("$dps/registrations/#"));
        assert!(!may_subscribe("#"));
        assert!(!may_subscribe("devices/d1/messages/devicebound/#"));
    }
}
