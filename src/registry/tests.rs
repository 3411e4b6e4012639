use super::*;
use jiff::Timestamp;

fn open() -> (tempfile::TempDir, Arc<Registry>) {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("registry.redb")).unwrap();
    (dir, registry)
}

fn spec(id: &str) -> DeviceSpec {
    DeviceSpec {
        id: id.into(),
        ..DeviceSpec::default()
    }
}

fn token(id: &str, key: &str) -> String {
    sas::sign(
        &sas::device_resource(id),
        &keys::decode(key).unwrap(),
        Timestamp::now().as_second() as u64 + 3600,
    )
}

#[test]
fn created_devices_get_random_keys_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.redb");
    let created = {
        let registry = Registry::open(&path).unwrap();
        let mut s = spec("dev-1");
        s.fields.tags =
            Some(serde_json::from_str(r#"{"max_temp": 95, "site": "plant-3"}"#).unwrap());
        registry.create(s).unwrap()
    };
    assert_ne!(created.primary_key, created.secondary_key);
    assert_eq!(
        keys::decode(created.primary_key.expose_str())
            .unwrap()
            .len(),
        32
    );
    let shown = format!("{created:?}");
    assert!(!shown.contains(created.primary_key.expose_str()), "{shown}");
    assert!(
        !shown.contains(created.secondary_key.expose_str()),
        "{shown}"
    );
    let registry = Registry::open(&path).unwrap();
    let again = registry.get("dev-1").unwrap();
    assert_eq!(again, created);
    assert_eq!(again.tags["max_temp"], 95);
}

#[test]
fn one_file_is_one_registry_per_process() {
    let (dir, a) = open();
    let b = Registry::open(&dir.path().join("registry.redb")).unwrap();
    a.create(spec("x")).unwrap();
    assert!(b.lookup("x").is_some());
}

#[test]
fn etag_conflicts_are_refused() {
    let (_dir, registry) = open();
    let created = registry.create(spec("dev-1")).unwrap();
    let patch = || DevicePatch {
        tags: Some(serde_json::from_str(r#"{"site": "a"}"#).unwrap()),
        ..DevicePatch::default()
    };
    let updated = registry
        .update("dev-1", patch(), Some(&created.etag))
        .unwrap();
    assert_ne!(updated.etag, created.etag);
    // The first etag is stale now.
    match registry.update("dev-1", patch(), Some(&created.etag)) {
        Err(RegistryError::EtagMismatch { current }) => assert_eq!(current, updated.etag),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        registry.delete("dev-1", Some(&created.etag)),
        Err(RegistryError::EtagMismatch { .. })
    ));
    // Quoted, as in an HTTP header, and `*`.
    registry
        .set_status(
            "dev-1",
            Status::Disabled,
            Some(&format!("\"{}\"", updated.etag)),
        )
        .unwrap();
    registry.delete("dev-1", Some("*")).unwrap();
    assert!(registry.get("dev-1").is_none());
}

#[test]
fn rotation_promotes_the_secondary_key() {
    let (_dir, registry) = open();
    let before = registry.create(spec("dev-1")).unwrap();
    let after = registry.rotate_key("dev-1", None).unwrap();
    assert_eq!(after.primary_key, before.secondary_key);
    assert_ne!(after.secondary_key, before.primary_key);
    assert!(
        registry
            .authenticate(
                "dev-1",
                Some(&token("dev-1", before.secondary_key.expose_str()))
            )
            .is_ok()
    );
    assert_eq!(
        registry
            .authenticate(
                "dev-1",
                Some(&token("dev-1", before.primary_key.expose_str()))
            )
            .unwrap_err()
            .reason(),
        "bad_signature"
    );
}

#[test]
fn tokens_of_disabled_and_unknown_devices_are_refused() {
    let (_dir, registry) = open();
    let device = registry.create(spec("dev-1")).unwrap();
    let good = token("dev-1", device.primary_key.expose_str());
    assert!(registry.authenticate("dev-1", Some(&good)).is_ok());
    assert!(
        registry
            .authenticate(
                "dev-1",
                Some(&token("dev-1", device.secondary_key.expose_str()))
            )
            .is_ok()
    );
    assert_eq!(
        registry.authenticate("dev-1", None).unwrap_err().reason(),
        "missing_token"
    );
    registry
        .set_status("dev-1", Status::Disabled, None)
        .unwrap();
    let refused = registry.authenticate("dev-1", Some(&good)).unwrap_err();
    assert!(refused.is_forbidden());
    // A wrong token on a disabled device is a bad token (401), not a hint that it exists.
    let other = keys::generate();
    assert_eq!(
        registry
            .authenticate("dev-1", Some(&token("dev-1", &other)))
            .unwrap_err()
            .reason(),
        "bad_signature"
    );
    assert_eq!(
        registry
            .authenticate("ghost", Some(&token("ghost", &other)))
            .unwrap_err()
            .reason(),
        "unknown_device"
    );
    assert_eq!(
        registry.admit("dev-1", false).unwrap_err().reason(),
        "disabled"
    );
    assert!(registry.admit("ghost", false).is_ok());
    assert_eq!(
        registry.admit("ghost", true).unwrap_err().reason(),
        "unknown_device"
    );
}

#[test]
fn a_device_with_a_derived_key_registers_itself_with_the_group_tags() {
    let (_dir, registry) = open();
    let group = registry
        .create_group(GroupSpec {
            id: "plant-3".into(),
            fields: GroupPatch {
                tags: Some(serde_json::from_str(r#"{"site": "plant-3", "max_temp": 90}"#).unwrap()),
                ..GroupPatch::default()
            },
        })
        .unwrap();
    let derived = keys::derive(&keys::decode(group.key.expose_str()).unwrap(), "sensor-9");
    let mut feed = registry.subscribe();

    let entry = registry
        .authenticate("sensor-9", Some(&token("sensor-9", &derived)))
        .unwrap();
    assert_eq!(entry.device.enrollment_group.as_deref(), Some("plant-3"));
    assert_eq!(entry.device.tags["max_temp"], 90);
    assert_eq!(entry.device.primary_key.expose_str(), derived);
    assert_eq!(feed.try_recv().unwrap().kind, ChangeKind::Created);
    // Second contact: an ordinary registered device.
    assert!(
        registry
            .authenticate("sensor-9", Some(&token("sensor-9", &derived)))
            .is_ok()
    );
    // The derived key of another device, or a key of no group, registers nothing.
    assert!(
        registry
            .authenticate("sensor-10", Some(&token("sensor-10", &derived)))
            .is_err()
    );
    assert!(registry.get("sensor-10").is_none());
    // A group that does not auto-register lets no one in.
    registry
        .update_group(
            "plant-3",
            GroupPatch {
                auto_register: Some(false),
                ..GroupPatch::default()
            },
            None,
        )
        .unwrap();
    let derived = keys::derive(&keys::decode(group.key.expose_str()).unwrap(), "sensor-11");
    assert_eq!(
        registry
            .authenticate("sensor-11", Some(&token("sensor-11", &derived)))
            .unwrap_err()
            .reason(),
        "unknown_device"
    );
}

#[test]
fn import_reports_each_row_and_a_rerun_skips_what_exists() {
    let (_dir, registry) = open();
    let rows = vec![
        spec("a"),
        spec("bad/id"),
        spec("b"),
        spec("a"),
        DeviceSpec {
            id: "c".into(),
            fields: DevicePatch {
                primary_key: Some("short".into()),
                ..DevicePatch::default()
            },
        },
    ];
    let outcomes = registry.import(rows.clone()).unwrap();
    assert_eq!(outcomes[0], ImportOutcome::Created);
    assert!(matches!(outcomes[1], ImportOutcome::Failed { .. }));
    assert_eq!(outcomes[2], ImportOutcome::Created);
    assert!(matches!(outcomes[3], ImportOutcome::Failed { .. }));
    assert!(matches!(outcomes[4], ImportOutcome::Failed { .. }));
    let again = registry.import(rows).unwrap();
    assert_eq!(again[0], ImportOutcome::Exists);
    assert_eq!(again[2], ImportOutcome::Exists);
    assert_eq!(registry.len(), 2);
}

#[test]
fn listing_pages_in_id_order_and_filters_by_tag() {
    let (_dir, registry) = open();
    let rows = (0..25)
        .map(|n| {
            let site = if n % 2 == 0 { "even" } else { "odd" };
            let tags = serde_json::json!({"site": site, "n": n});
            DeviceSpec {
                id: format!("dev-{n:02}"),
                fields: DevicePatch {
                    tags: Some(serde_json::from_value(tags).unwrap()),
                    ..DevicePatch::default()
                },
            }
        })
        .collect();
    registry.import(rows).unwrap();
    let first = registry.list(None, 10, &[]);
    assert_eq!(first.devices.len(), 10);
    assert_eq!(first.devices[0]["id"], "dev-00");
    assert!(first.devices[0].get("primary_key").is_none());
    let second = registry.list(first.next.as_deref(), 10, &[]);
    assert_eq!(second.devices[0]["id"], "dev-10");
    let third = registry.list(second.next.as_deref(), 10, &[]);
    assert_eq!(third.devices.len(), 5);
    assert!(third.next.is_none());
    let even = registry.list(None, 100, &[("site".into(), "even".into())]);
    assert_eq!(even.devices.len(), 13);
    let one = registry.list(None, 100, &[("n".into(), "7".into())]);
    assert_eq!(one.devices.len(), 1);
}

#[test]
fn activity_is_written_by_a_flush_without_a_new_etag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.redb");
    let etag = {
        let registry = Registry::open(&path).unwrap();
        let device = registry.create(spec("dev-1")).unwrap();
        assert!(device.last_activity.is_none());
        registry.admit("dev-1", false).unwrap();
        assert!(registry.get("dev-1").unwrap().last_activity.is_some());
        assert_eq!(registry.flush_activity().unwrap(), 1);
        assert_eq!(registry.flush_activity().unwrap(), 0, "nothing new");
        device.etag
    };
    let registry = Registry::open(&path).unwrap();
    let device = registry.get("dev-1").unwrap();
    assert!(device.last_activity.is_some());
    assert_eq!(device.etag, etag);
}
