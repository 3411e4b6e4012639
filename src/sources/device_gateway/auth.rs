//! Who a CONNECT is: the client id is the device id, the username
//! `{host}/{device id}/?api-version=…`, the password a SAS token the registry checks
//! exactly as it does for the `http` source (constant time, expiry, disabled, unknown
//! unless an enrollment group's derived key registers it); or, with no password, an X.509
//! client certificate whose thumbprint is the device's ([`super::x509`]).

use rumqttc::mqttbytes::v4::{Connect, ConnectAuth, ConnectReturnCode};

use super::x509::Thumbprints;
use crate::registry::{AuthError, Registry, Status, device};

/// A refused CONNECT: the return code the device gets and the `reason` label it is
/// counted under.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Refusal {
    pub code: ConnectReturnCode,
    pub reason: &'static str,
    /// What the log says (never sent to the device).
    pub detail: String,
}

impl Refusal {
    pub(super) fn not_authorized(reason: &'static str, detail: String) -> Self {
        Self {
            code: ConnectReturnCode::NotAuthorized,
            reason,
            detail,
        }
    }
}

/// Lets the device of `connect` in, or says why not. A CONNECT without a password over
/// a connection that presented a client `certificate` is checked by its thumbprint.
pub(super) fn admit(
    registry: &Registry,
    connect: &Connect,
    certificate: Option<&Thumbprints>,
) -> Result<(), Refusal> {
    let device_id = connect.client_id.as_str();
    if let Err(detail) = check_client_id(device_id) {
        return Err(Refusal {
            code: ConnectReturnCode::BadClientId,
            reason: "bad_client_id",
            detail,
        });
    }
    if let (ConnectAuth::Username { username }, Some(certificate)) = (&connect.auth, certificate) {
        check_username(username, device_id).map_err(|detail| {
            Refusal::not_authorized("bad_username", format!("device `{device_id}`: {detail}"))
        })?;
        return x509_admit(registry, device_id, certificate);
    }
    let ConnectAuth::UsernamePassword { username, password } = &connect.auth else {
        return Err(Refusal::not_authorized(
            "missing_token",
            format!("device `{device_id}` sent no username and password"),
        ));
    };
    check_username(username, device_id).map_err(|detail| {
        Refusal::not_authorized("bad_username", format!("device `{device_id}`: {detail}"))
    })?;
    let token = std::str::from_utf8(password).map_err(|_| {
        Refusal::not_authorized(
            "malformed_token",
            format!("device `{device_id}`: the password is not UTF-8"),
        )
    })?;
    registry
        .authenticate(device_id, Some(token))
        .map(drop)
        .map_err(|e: AuthError| Refusal::not_authorized(e.reason(), e.to_string()))
}

/// A device whose certificate's thumbprint is its recorded `x509_thumbprint`, enabled.
fn x509_admit(
    registry: &Registry,
    device_id: &str,
    certificate: &Thumbprints,
) -> Result<(), Refusal> {
    let Some(entry) = registry.lookup(device_id) else {
        return Err(Refusal::not_authorized(
            "unknown_device",
            format!("device `{device_id}` is not registered"),
        ));
    };
    let matches = entry
        .device
        .x509_thumbprint
        .as_deref()
        .is_some_and(|recorded| certificate.matches(recorded));
    if !matches {
        return Err(Refusal::not_authorized(
            "bad_certificate",
            format!(
                "device `{device_id}`: the client certificate's thumbprint is not the device's x509_thumbprint"
            ),
        ));
    }
    if entry.device.status == Status::Disabled {
        return Err(Refusal::not_authorized(
            "disabled",
            format!("device `{device_id}` is disabled"),
        ));
    }
    entry.touch();
    Ok(())
}

/// A registry id that is also safe inside topic filters (no MQTT wildcards).
pub(super) fn check_client_id(id: &str) -> Result<(), String> {
    device::check_id(id)?;
    match id.contains(['+', '#']) {
        true => Err(format!("client id `{id}` holds an MQTT wildcard")),
        false => Ok(()),
    }
}

/// The username of a device (not a module): `{host}/{device id}/?api-version=…`, or
/// `{host}/{device id}/` from older SDKs.
fn check_username(username: &str, device_id: &str) -> Result<(), String> {
    let path = username.split_once('?').map_or(username, |(path, _)| path);
    let mut segments = path.split('/');
    let (Some(host), Some(device), rest) = (segments.next(), segments.next(), segments.next())
    else {
        return Err(format!(
            "username `{username}` is not `{{host}}/{{device id}}/?api-version=…`"
        ));
    };
    if host.is_empty() || device != device_id {
        return Err(format!(
            "username `{username}` does not name device `{device_id}`"
        ));
    }
    match rest {
        None | Some("") if segments.next().is_none() => Ok(()),
        _ => Err(format!(
            "username `{username}` names a module; modules are not served"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_name_the_device() {
        let ok = |u: &str| check_username(u, "d1").is_ok();
        assert!(ok(
            "hub.example/d1/?api-version=2021-04-12&DeviceClientType=py"
        ));
        assert!(ok("127.0.0.5/d1/"));
        assert!(ok("hub/d1"));
        assert!(!ok("hub/d2/?api-version=1"));
        assert!(!ok("/d1/?api-version=1"));
        assert!(!ok("hub/d1/module-a/?api-version=1"));
        assert!(!ok("d1"));
    }

    #[test]
    fn client_ids_hold_no_wildcards() {
        assert!(check_client_id("pump-7").is_ok());
        assert!(check_client_id("a+b").is_err());
        assert!(check_client_id("a#").is_err());
        assert!(check_client_id("").is_err());
    }
}

#[cfg(test)]
mod certificate_tests {
    use rumqttc::mqttbytes::v4::{Connect, ConnectAuth};

    use super::*;
    use crate::registry::{DevicePatch, DeviceSpec};

    fn connect(device_id: &str) -> Connect {
        let mut connect = Connect::new(device_id);
        connect.auth = ConnectAuth::Username {
            username: format!("hub/{device_id}/?api-version=2021-04-12"),
        };
        connect
    }

    #[test]
    fn a_certificate_admits_only_its_enabled_device() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("registry.redb")).unwrap();
        let der = b"a device certificate";
        let prints = Thumbprints::of(der);
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(der));
        for (id, status, thumbprint) in [
            ("cam-1", Status::Enabled, Some(sha256.clone())),
            ("cam-2", Status::Disabled, Some(sha256.clone())),
            ("cam-3", Status::Enabled, None),
        ] {
            registry
                .create(DeviceSpec {
                    id: id.into(),
                    fields: DevicePatch {
                        status: Some(status),
                        x509_thumbprint: thumbprint,
                        ..DevicePatch::default()
                    },
                })
                .unwrap();
        }
        let reason = |id: &str, cert: Option<&Thumbprints>| {
            admit(&registry, &connect(id), cert).map_err(|refusal| refusal.reason)
        };
        assert_eq!(reason("cam-1", Some(&prints)), Ok(()));
        assert_eq!(reason("cam-2", Some(&prints)), Err("disabled"));
        assert_eq!(reason("cam-3", Some(&prints)), Err("bad_certificate"));
        assert_eq!(reason("cam-9", Some(&prints)), Err("unknown_device"));
        let other = Thumbprints::of(b"another certificate");
        assert_eq!(reason("cam-1", Some(&other)), Err("bad_certificate"));
        // Without a certificate, a CONNECT without a password is not admitted.
        assert_eq!(reason("cam-1", None), Err("missing_token"));
    }
}
