//! The topics of an IoT hub's device protocol, and which of them a device may use: only
//! its own (`devices/{its id}/…`) and the hub's request topics (`$iothub/…`).

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// What a property bag leaves unencoded: letters, digits and `-_.~` (as Python's
/// `urllib.parse.quote`, which the SDKs decode with).
pub(super) const BAG: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What a device's PUBLISH is for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PublishTopic {
    /// `devices/{id}/messages/events/{property bag}`: telemetry, with its properties
    /// URL-decoded, in the order given.
    Telemetry(Vec<(String, String)>),
    /// A `$iothub/…` request (twins, direct method answers): not served yet.
    Hub,
    /// Anything else: another device's topic or one no hub has.
    Foreign,
}

/// Classifies a PUBLISH topic of device `device_id`.
pub(super) fn publish_topic(device_id: &str, topic: &str) -> PublishTopic {
    if topic.starts_with("$iothub/") {
        return PublishTopic::Hub;
    }
    let own = topic
        .strip_prefix("devices/")
        .and_then(|rest| rest.strip_prefix(device_id))
        .and_then(|rest| rest.strip_prefix("/messages/events"));
    match own {
        Some("") => PublishTopic::Telemetry(Vec::new()),
        Some(rest) => match rest.strip_prefix('/') {
            Some(bag) => PublishTopic::Telemetry(property_bag(bag)),
            None => PublishTopic::Foreign,
        },
        None => PublishTopic::Foreign,
    }
}

/// Whether `device_id` may subscribe to `filter`: a filter under its own
/// `devices/{id}/` or under `$iothub/`.
pub(super) fn may_subscribe(device_id: &str, filter: &str) -> bool {
    if filter.starts_with("$iothub/") {
        return true;
    }
    filter
        .strip_prefix("devices/")
        .and_then(|rest| rest.strip_prefix(device_id))
        .is_some_and(|rest| rest.starts_with('/'))
}

/// A property bag, `name=value&name2=value2` (URL-encoded; a trailing `/` and empty pairs
/// ignored, a name without `=` has an empty value).
pub(super) fn property_bag(bag: &str) -> Vec<(String, String)> {
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    bag.trim_end_matches('/')
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => (decode(name), decode(value)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

/// The topic a cloud-to-device message reaches its device on:
/// `devices/{id}/messages/devicebound/$.mid=…&$.to=…&{properties}`.
pub(super) fn devicebound_topic(
    device_id: &str,
    message_id: &str,
    properties: &[(String, String)],
) -> String {
    let to = format!("/devices/{device_id}/messages/devicebound");
    let system = [("$.mid", message_id), ("$.to", to.as_str())];
    let pairs = system
        .into_iter()
        .chain(properties.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .map(|(name, value)| {
            format!(
                "{}={}",
                utf8_percent_encode(name, BAG),
                utf8_percent_encode(value, BAG)
            )
        })
        .collect::<Vec<_>>();
    format!(
        "devices/{device_id}/messages/devicebound/{}",
        pairs.join("&")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_topics_carry_their_property_bag() {
        assert_eq!(
            publish_topic("d1", "devices/d1/messages/events/"),
            PublishTopic::Telemetry(vec![])
        );
        assert_eq!(
            publish_topic("d1", "devices/d1/messages/events"),
            PublishTopic::Telemetry(vec![])
        );
        assert_eq!(
            publish_topic(
                "d1",
                "devices/d1/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8&room=a%20b&flag"
            ),
            PublishTopic::Telemetry(vec![
                ("$.ct".into(), "application/json".into()),
                ("$.ce".into(), "utf-8".into()),
                ("room".into(), "a b".into()),
                ("flag".into(), String::new()),
            ])
        );
    }

    #[test]
    fn devicebound_topics_round_trip_their_properties() {
        let props = vec![("colour".to_owned(), "red & blue".to_owned())];
        let topic = devicebound_topic("d1", "m-1", &props);
        let bag = topic
            .strip_prefix("devices/d1/messages/devicebound/")
            .unwrap();
        assert_eq!(
            property_bag(bag),
            vec![
                ("$.mid".to_owned(), "m-1".to_owned()),
                (
                    "$.to".to_owned(),
                    "/devices/d1/messages/devicebound".to_owned()
                ),
                ("colour".to_owned(), "red & blue".to_owned()),
            ]
        );
    }

    #[test]
    fn another_devices_topics_are_foreign() {
        assert_eq!(
            publish_topic("d1", "devices/d10/messages/events/"),
            PublishTopic::Foreign
        );
        assert_eq!(
            publish_topic("d1", "devices/d2/messages/events/"),
            PublishTopic::Foreign
        );
        assert_eq!(
            publish_topic("d1", "devices/d1/messages/eventsx"),
            PublishTopic::Foreign
        );
        assert_eq!(publish_topic("d1", "weather/x"), PublishTopic::Foreign);
        assert_eq!(
            publish_topic("d1", "$iothub/twin/GET/?$rid=1"),
            PublishTopic::Hub
        );
    }

    #[test]
    fn subscriptions_stay_in_the_devices_own_topics() {
        assert!(may_subscribe("d1", "devices/d1/messages/devicebound/#"));
        assert!(may_subscribe("d1", "$iothub/methods/POST/#"));
        assert!(!may_subscribe("d1", "devices/d2/messages/devicebound/#"));
        assert!(!may_subscribe("d1", "devices/d10/messages/devicebound/#"));
        assert!(!may_subscribe("d1", "devices/+/messages/devicebound/#"));
        assert!(!may_subscribe("d1", "#"));
        assert!(!may_subscribe("d1", "devices/d1"));
    }
}
