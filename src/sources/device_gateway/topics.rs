//! The topics of an IoT hub's device protocol, and which of them a device may use: only
//! its own (`devices/{its id}/…`) and the hub's request topics (`$iothub/…`).

use percent_encoding::percent_decode_str;

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
