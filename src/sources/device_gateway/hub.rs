//! The hub's request topics (`$iothub/…`): which request a device's PUBLISH there makes,
//! and the topics weir sends requests and answers on, as the device SDKs spell them.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::topics::property_bag;
use crate::device_sessions::Subscription;

/// What a topic segment or property leaves unencoded (as Python's `urllib.parse.quote`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A device's request on a `$iothub/…` topic.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum HubRequest {
    /// `$iothub/methods/res/{status}/?$rid={rid}`: the answer to a direct method.
    MethodAnswer { status: i64, rid: String },
    /// `$iothub/twin/GET/?$rid={rid}`: the whole twin, please.
    TwinGet { rid: String },
    /// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`: merge the payload into the
    /// reported properties.
    TwinReported { rid: String },
    /// Anything else under `$iothub/` (or one of the above without a `$rid`).
    Unknown,
}

/// The request a PUBLISH to `topic` (under `$iothub/`) makes.
pub(super) fn request(topic: &str) -> HubRequest {
    let Some(rest) = topic.strip_prefix("$iothub/") else {
        return HubRequest::Unknown;
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let rid = property_bag(query)
        .into_iter()
        .find(|(name, _)| name == "$rid")
        .map(|(_, rid)| rid)
        .filter(|rid| !rid.is_empty());
    let Some(rid) = rid else {
        return HubRequest::Unknown;
    };
    let path = path.trim_end_matches('/');
    if let Some(status) = path.strip_prefix("methods/res/") {
        return match status.parse() {
            Ok(status) => HubRequest::MethodAnswer { status, rid },
            Err(_) => HubRequest::Unknown,
        };
    }
    match path {
        "twin/GET" => HubRequest::TwinGet { rid },
        "twin/PATCH/properties/reported" => HubRequest::TwinReported { rid },
        _ => HubRequest::Unknown,
    }
}

/// Where direct method `name` goes: `$iothub/methods/POST/{name}/?$rid={rid}`.
pub(super) fn method_topic(name: &str, rid: u64) -> String {
    format!(
        "$iothub/methods/POST/{}/?$rid={rid}",
        utf8_percent_encode(name, SEGMENT)
    )
}

/// Where a twin request is answered: `$iothub/twin/res/{status}/?$rid={rid}`, with the
/// new `$version` after a reported patch.
pub(super) fn twin_answer_topic(status: u16, rid: &str, version: Option<u64>) -> String {
    let rid = utf8_percent_encode(rid, SEGMENT);
    match version {
        Some(version) => format!("$iothub/twin/res/{status}/?$rid={rid}&$version={version}"),
        None => format!("$iothub/twin/res/{status}/?$rid={rid}"),
    }
}

/// Where a desired-property change goes: `$iothub/twin/PATCH/properties/desired/?$version=n`.
pub(super) fn desired_topic(version: u64) -> String {
    format!("$iothub/twin/PATCH/properties/desired/?$version={version}")
}

/// What a device subscribing to `filter` asks for, of what weir sends on its own.
pub(super) fn subscriptions(filter: &str) -> impl Iterator<Item = Subscription> + '_ {
    [
        (Subscription::Methods, "$iothub/methods/POST/m/?$rid=1"),
        (
            Subscription::Desired,
            "$iothub/twin/PATCH/properties/desired/?$version=1",
        ),
    ]
    .into_iter()
    .filter(move |(_, sample)| covers(filter, sample))
    .map(|(kind, _)| kind)
}

/// Whether MQTT filter `filter` (with `+` and `#`) matches `topic`.
fn covers(filter: &str, topic: &str) -> bool {
    let mut levels = topic.split('/');
    for wanted in filter.split('/') {
        match (wanted, levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (wanted, Some(level)) if wanted == level => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The filters the SDKs subscribe to for direct methods and desired changes.
    const METHODS_FILTER: &str = "$iothub/methods/POST/#";
    const DESIRED_FILTER: &str = "$iothub/twin/PATCH/properties/desired/#";

    #[test]
    fn requests_are_recognised_with_their_request_id() {
        assert_eq!(
            request("$iothub/methods/res/200/?$rid=17"),
            HubRequest::MethodAnswer {
                status: 200,
                rid: "17".into()
            }
        );
        assert_eq!(
            request("$iothub/methods/res/-3/?$rid=a%20b"),
            HubRequest::MethodAnswer {
                status: -3,
                rid: "a b".into()
            }
        );
        assert_eq!(
            request("$iothub/twin/GET/?$rid=abc"),
            HubRequest::TwinGet { rid: "abc".into() }
        );
        assert_eq!(
            request("$iothub/twin/PATCH/properties/reported/?$rid=9&$version=4"),
            HubRequest::TwinReported { rid: "9".into() }
        );
    }

    #[test]
    fn malformed_or_unknown_requests_are_unknown() {
        for topic in [
            "$iothub/methods/res/ok/?$rid=1",
            "$iothub/methods/res/200/",
            "$iothub/twin/GET/",
            "$iothub/twin/GET/?$rid=",
            "$iothub/twin/PATCH/properties/desired/?$rid=1",
            "$iothub/methods/POST/reboot/?$rid=1",
            "$iothub/clientproxy/x",
            "devices/d1/messages/events/",
        ] {
            assert_eq!(request(topic), HubRequest::Unknown, "{topic}");
        }
    }

    #[test]
    fn subscriptions_are_matched_with_wildcards() {
        let kinds = |filter| subscriptions(filter).collect::<Vec<_>>();
        assert_eq!(kinds(METHODS_FILTER), vec![Subscription::Methods]);
        assert_eq!(kinds(DESIRED_FILTER), vec![Subscription::Desired]);
        assert_eq!(
            kinds("$iothub/#"),
            vec![Subscription::Methods, Subscription::Desired]
        );
        assert_eq!(kinds("$iothub/methods/+/#"), vec![Subscription::Methods]);
        assert!(kinds("$iothub/twin/res/#").is_empty());
        assert!(kinds("$iothub/methods/POST").is_empty());
    }

    #[test]
    fn weirs_topics_are_spelled_as_the_sdks_read_them() {
        assert_eq!(
            method_topic("reduce_load", 7),
            "$iothub/methods/POST/reduce_load/?$rid=7"
        );
        assert_eq!(
            method_topic("a b/c", 1),
            "$iothub/methods/POST/a%20b%2Fc/?$rid=1"
        );
        assert_eq!(
            twin_answer_topic(200, "x", None),
            "$iothub/twin/res/200/?$rid=x"
        );
        assert_eq!(
            twin_answer_topic(204, "5", Some(3)),
            "$iothub/twin/res/204/?$rid=5&$version=3"
        );
        assert_eq!(
            desired_topic(2),
            "$iothub/twin/PATCH/properties/desired/?$version=2"
        );
    }
}
