//! A telemetry publish's content encoding (`$.ce` in its property bag), as a hub's
//! message routing reads it: `utf-8` (the SDKs' default with JSON) says the payload is
//! UTF-8 text, and a payload that is not is refused; no `$.ce` says nothing. Any other
//! encoding (`utf-16`, `gzip`, …) is refused rather than decoded as if it were UTF-8:
//! the publish goes to `<id>.errors` as undecodable (counted, and acknowledged so the
//! device does not send it forever), the connection stays up.

/// Checks `payload` against the content encoding `ce` names; why not, when it does not.
pub(super) fn check(ce: Option<&str>, payload: &[u8]) -> Result<(), String> {
    let Some(ce) = ce.map(str::trim).filter(|ce| !ce.is_empty()) else {
        return Ok(());
    };
    if ce.eq_ignore_ascii_case("utf-8") || ce.eq_ignore_ascii_case("utf8") {
        return std::str::from_utf8(payload)
            .map(drop)
            .map_err(|e| format!("the content encoding is utf-8 but the payload is not: {e}"));
    }
    Err(format!(
        "content encoding `{ce}` is not served (expected utf-8 or none)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_payloads_pass_and_other_encodings_are_refused() {
        assert!(check(None, b"\xff").is_ok());
        assert!(check(Some(""), b"\xff").is_ok());
        assert!(check(Some("utf-8"), "{\"t\": \"21°\"}".as_bytes()).is_ok());
        assert!(check(Some("UTF-8"), b"{}").is_ok());
        assert!(check(Some("utf-8"), b"\xff\xfe").is_err());
        assert!(check(Some("gzip"), b"{}").is_err());
        assert!(check(Some("utf-16"), b"{}").is_err());
    }
}
