//! Device routes for callers whose role is limited to devices by tag (`operator` for
//! `site=plant-3`): which devices they see, and on which they may act.
//!
//! A device out of every scope of the caller is answered as if it did not exist (404), so
//! a scoped token cannot probe which device ids exist elsewhere. A device in scope with
//! too small a role there gets 403. A change is made on the device as it was checked: its
//! etag is the change's `If-Match` (unless the caller sent one), so a concurrent change
//! of its tags makes the change fail with 412 rather than act on a device now out of
//! scope. A scoped caller may change a device's tags only to tags that keep it in scope.

use axum::http::StatusCode;

use super::Caller;
use crate::registry::{Device, Properties, Registry};
use crate::tokens::Role;

/// Why a scoped caller may not act on a device: a status and a message.
pub type Refusal = (StatusCode, String);

fn not_found(id: &str) -> Refusal {
    (StatusCode::NOT_FOUND, format!("device `{id}` not found"))
}

/// Whether `caller` may act with `needed` on the device `id`. `Ok(None)`: its role on
/// every device does; `Ok(Some(etag))`: its role on this device does, as of `etag`.
pub fn check(
    registry: &Registry,
    caller: &Caller,
    id: &str,
    needed: Role,
) -> Result<Option<String>, Refusal> {
    if caller.grants.everywhere() >= Some(needed) {
        return Ok(None);
    }
    let device = registry.get(id).ok_or_else(|| not_found(id))?;
    match caller.grants.on_device(&device.tags) {
        None => Err(not_found(id)),
        Some(role) if role < needed => Err((
            StatusCode::FORBIDDEN,
            format!(
                "this needs the `{needed}` role on `{id}`; the token `{}` has `{role}` there",
                caller.name
            ),
        )),
        Some(_) => Ok(Some(device.etag)),
    }
}

/// New tags for a device a scoped caller changes: they must keep `needed` in reach.
pub fn check_new_tags(caller: &Caller, tags: &Properties, needed: Role) -> Result<(), Refusal> {
    match caller.grants.on_device(tags) >= Some(needed) {
        true => Ok(()),
        false => Err((
            StatusCode::FORBIDDEN,
            "these tags would take the device out of the token's scope".to_owned(),
        )),
    }
}

/// The `If-Match` of a change: the caller's, or (for `*` or none) the etag the scope was
/// checked against.
pub fn if_match(sent: Option<String>, checked: Option<String>) -> Option<String> {
    match (sent, checked) {
        (Some(sent), Some(checked)) if sent.trim().trim_matches('"') == "*" => Some(checked),
        (Some(sent), _) => Some(sent),
        (None, checked) => checked,
    }
}

/// Whether a listing shows `device` to `caller` (a role on every device shows all).
pub fn lists(caller: &Caller, device: &Device) -> bool {
    caller.grants.everywhere().is_some() || caller.grants.on_device(&device.tags).is_some()
}
