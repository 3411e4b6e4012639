use std::time::Duration;

use super::*;

const LIMITS: Limits = Limits {
    max_queued: 50,
    max_delivery_count: 3,
    max_settled: 100,
};
const HOUR: Duration = Duration::from_secs(3600);

fn message(payload: &str, ttl: Duration, ack: Ack) -> NewMessage {
    NewMessage {
        payload: payload.into(),
        ttl,
        ack,
        ..NewMessage::default()
    }
}

fn open(dir: &Path) -> Arc<Queues> {
    Devicebound::default().open("gw", dir, LIMITS).unwrap()
}

#[test]
fn queues_are_bounded_ordered_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path());
    let first = queue.enqueue("d1", message("a", HOUR, Ack::None)).unwrap();
    for n in 1..LIMITS.max_queued {
        queue
            .enqueue("d1", message(&n.to_string(), HOUR, Ack::None))
            .unwrap();
    }
    assert!(matches!(
        queue.enqueue("d1", message("over", HOUR, Ack::None)),
        Err(QueueError::Full { max: 50, .. })
    ));
    drop(queue);

    let queue = open(dir.path());
    assert_eq!(queue.depth("d1"), LIMITS.max_queued);
    let head = queue.next_delivery("d1").unwrap();
    assert_eq!(
        (head.id.as_str(), head.delivery_count),
        (first.message.id.as_str(), 1)
    );
    queue.complete("d1", &first.message.id).unwrap();
    assert_eq!(queue.next_delivery("d1").unwrap().payload, "1");
    assert!(queue.take_settled(10).is_empty(), "ack none: no feedback");
}

#[test]
fn a_known_id_is_queued_once() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path());
    let with_id = |payload: &str| NewMessage {
        id: Some("key-1".into()),
        ..message(payload, HOUR, Ack::None)
    };
    assert!(queue.enqueue("d1", with_id("x")).unwrap().fresh);
    let again = queue.enqueue("d1", with_id("y")).unwrap();
    assert!(!again.fresh);
    assert_eq!((again.message.payload.as_str(), again.depth), ("x", 1));
}

#[test]
fn expiry_settles_dead_letters_and_asked_for_feedback_durably() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path());
    let short = Duration::from_millis(1);
    let none = queue
        .enqueue("d1", message("none", short, Ack::None))
        .unwrap();
    let negative = queue
        .enqueue("d1", message("neg", short, Ack::Negative))
        .unwrap();
    let positive = queue
        .enqueue("d2", message("pos", HOUR, Ack::Positive))
        .unwrap();
    let later = Timestamp::now() + jiff::SignedDuration::from_secs(1);
    // The timer's view: both short ones expire, the hour-long one is next.
    let next = queue.expire(later).unwrap();
    assert_eq!(next, positive.message.expires_at);
    assert_eq!(queue.depth("d1"), 0);
    queue.complete("d2", &positive.message.id).unwrap();
    drop(queue);

    // Kept across a restart until handed over.
    let queue = open(dir.path());
    let settled = queue.take_settled(10);
    let seen: Vec<_> = settled
        .iter()
        .map(|s| (s.message.id.clone(), s.outcome, s.wants_feedback()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (none.message.id, Outcome::Expired, false),
            (negative.message.id, Outcome::Expired, true),
            (positive.message.id, Outcome::Success, true),
        ]
    );
    assert!(queue.take_settled(10).is_empty(), "claimed");
    queue.release();
    assert_eq!(queue.take_settled(1).len(), 1);
    queue.handed_over(settled[1].seq).unwrap();
    drop(queue);
    let queue = open(dir.path());
    let left = queue.take_settled(10);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].outcome, Outcome::Success);
}

#[test]
fn a_message_delivered_too_often_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path());
    let stuck = queue
        .enqueue("d1", message("stuck", HOUR, Ack::Full))
        .unwrap();
    queue
        .enqueue("d1", message("next", HOUR, Ack::None))
        .unwrap();
    for n in 1..=LIMITS.max_delivery_count {
        let sent = queue.next_delivery("d1").unwrap();
        assert_eq!(
            (sent.id.as_str(), sent.delivery_count),
            (stuck.message.id.as_str(), n)
        );
    }
    assert_eq!(queue.next_delivery("d1").unwrap().payload, "next");
    let settled = queue.take_settled(10);
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].outcome, Outcome::DeliveryCountExceeded);
}

#[test]
fn gateways_are_picked_by_id_and_have_a_file_each() {
    let dir = tempfile::tempdir().unwrap();
    // A queue file of the first format becomes the first gateway's.
    std::fs::write(
        dir.path().join("devicebound.json"),
        r#"{"d1":[{"id":"old","payload":"x","enqueued_at":"2026-01-01T00:00:00Z","expires_at":"2999-01-01T00:00:00Z"}]}"#,
    )
    .unwrap();
    let hub = Devicebound::default();
    assert_eq!(hub.gateway(None).err(), Some(NoGateway::None));
    let a = hub.open("a", dir.path(), LIMITS).unwrap();
    assert_eq!(a.depth("d1"), 1);
    assert!(Arc::ptr_eq(&hub.gateway(None).unwrap(), &a));
    let b = hub.open("b", dir.path(), LIMITS).unwrap();
    assert_eq!(b.depth("d1"), 0);
    assert_eq!(
        hub.gateway(None).err(),
        Some(NoGateway::Ambiguous(vec!["a".into(), "b".into()]))
    );
    assert!(Arc::ptr_eq(&hub.gateway(Some("b")).unwrap(), &b));
    assert!(matches!(
        hub.gateway(Some("c")),
        Err(NoGateway::Unknown { .. })
    ));
    // A rebuilt gateway shares its running queues; a removed one is no longer offered.
    assert!(Arc::ptr_eq(&hub.open("a", dir.path(), LIMITS).unwrap(), &a));
    drop(b);
    assert!(Arc::ptr_eq(&hub.gateway(None).unwrap(), &a));
    assert!(dir.path().join("devicebound/a.json").exists());
    assert!(!dir.path().join("devicebound.json").exists());
}
