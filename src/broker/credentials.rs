//! Broker credentials of the `mqtt` source, the `mqtt` sink and the `mqtt_publish` action:
//! `username`, and `password` (`${VAR}` works, as in any string) or `password_file`.
//!
//! The file is read when the component is built, so a missing file fails the start (or
//! rolls a reload back) with its name, instead of a connection refused later.

use std::path::Path;

use crate::config::{FieldProblem, Sensitive};

/// What a component's configuration says about credentials.
pub struct CredentialFields<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a Sensitive>,
    pub password_file: Option<&'a Path>,
}

/// The credentials a connection presents, resolved (the password file read).
#[derive(Clone, Debug, PartialEq)]
pub struct Credentials {
    username: String,
    password: Option<Sensitive>,
}

impl CredentialFields<'_> {
    /// The combinations a CONNECT cannot carry or that say two things at once.
    pub fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if self.password.is_some() && self.password_file.is_some() {
            problems.push(FieldProblem::at(
                ["password_file"],
                "write `password` or `password_file`, not both",
            ));
        }
        // MQTT 3.1.1 sends no password without a user name, and rumqttc follows it for 5.
        if self.username.is_none() && (self.password.is_some() || self.password_file.is_some()) {
            problems.push(FieldProblem::at(
                ["username"],
                "a password needs a `username`",
            ));
        }
        problems
    }

    /// The credentials to connect with, reading `password_file` now (its trailing newline
    /// is not part of the password); `None` without a `username`.
    pub fn resolve(&self) -> anyhow::Result<Option<Credentials>> {
        let Some(username) = self.username else {
            return Ok(None);
        };
        let password = match (self.password, self.password_file) {
            (Some(password), _) => Some(password.clone()),
            (None, Some(file)) => Some(read_password_file(file)?),
            (None, None) => None,
        };
        Ok(Some(Credentials {
            username: username.to_owned(),
            password,
        }))
    }
}

fn read_password_file(file: &Path) -> anyhow::Result<Sensitive> {
    let text = std::fs::read_to_string(file).map_err(|err| {
        anyhow::anyhow!("cannot read the password file {}: {err}", file.display())
    })?;
    Ok(Sensitive::new(
        text.trim_end_matches(['\n', '\r']).to_owned(),
    ))
}

impl Credentials {
    /// Sets the CONNECT's user name and password on a 3.1.1 connection.
    pub fn apply_v4(&self, options: &mut rumqttc::MqttOptions) {
        match &self.password {
            Some(password) => {
                options.set_credentials(self.username.clone(), password.expose().to_owned())
            }
            None => options.set_username(self.username.clone()),
        };
    }

    /// Sets the CONNECT's user name and password on an MQTT 5 connection.
    pub fn apply_v5(&self, options: &mut rumqttc_v5::MqttOptions) {
        match &self.password {
            Some(password) => {
                options.set_credentials(self.username.clone(), password.expose().to_owned())
            }
            None => options.set_username(self.username.clone()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(
        username: Option<&'a str>,
        password: Option<&'a Sensitive>,
        password_file: Option<&'a Path>,
    ) -> CredentialFields<'a> {
        CredentialFields {
            username,
            password,
            password_file,
        }
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let password = Sensitive::from("hunter2");
        let credentials = fields(Some("app"), Some(&password), None)
            .resolve()
            .unwrap()
            .unwrap();
        let shown = format!("{password:?} {credentials:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("app"), "{shown}");
    }

    #[test]
    fn a_password_file_loses_its_trailing_newline_and_names_itself_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mqtt.pw");
        std::fs::write(&file, "s3cret \n").unwrap();
        let credentials = fields(Some("app"), None, Some(&file))
            .resolve()
            .unwrap()
            .unwrap();
        assert_eq!(credentials.password, Some(Sensitive::from("s3cret ")));

        let missing = dir.path().join("nope.pw");
        let err = fields(Some("app"), None, Some(&missing))
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.pw"), "{err}");
    }

    #[test]
    fn a_password_needs_a_user_and_only_one_source() {
        let password = Sensitive::from("x");
        let file = Path::new("/x");
        let both = fields(Some("app"), Some(&password), Some(file)).check();
        assert!(format!("{both:?}").contains("not both"), "{both:?}");
        let anonymous = fields(None, Some(&password), None).check();
        assert!(format!("{anonymous:?}").contains("needs a `username`"));
        assert!(fields(Some("app"), None, None).check().is_empty());
        assert!(fields(None, None, None).resolve().unwrap().is_none());
    }
}
