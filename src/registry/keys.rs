//! Symmetric device keys: random ones from the OS CSPRNG, and keys derived from an
//! enrollment group's key, so a device provisioned from a group can register itself.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::TryRngCore;
use sha2::Sha256;

/// Bytes in every key weir generates.
pub const KEY_BYTES: usize = 32;

/// What a key a request sets looks like, for the API's OpenAPI document: canonical Base64
/// of at least 16 bytes (what `DevicePatch::check` accepts of [`decode`]).
pub const KEY_PATTERN: &str = "^(?:[A-Za-z0-9+/]{4}){5,}(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=|[A-Za-z0-9+/]{4})$";

/// A fresh 32-byte key from the operating system's CSPRNG, Base64-encoded.
pub fn generate() -> String {
    let mut key = [0u8; KEY_BYTES];
    // The OS generator failing means the machine cannot make keys at all; there is no
    // safe fallback, so this is the one place weir gives up.
    rand::rngs::OsRng
        .try_fill_bytes(&mut key)
        .expect("the operating system's random number generator failed");
    STANDARD.encode(key)
}

/// The key of `device_id` in an enrollment group: Base64(HMAC-SHA256(group key, device id)).
pub fn derive(group_key: &[u8], device_id: &str) -> String {
    STANDARD.encode(hmac_sha256(group_key, device_id.as_bytes()))
}

/// Decodes a Base64 key; `None` when it is not Base64 or empty.
pub fn decode(key: &str) -> Option<Vec<u8>> {
    STANDARD.decode(key.trim()).ok().filter(|k| !k.is_empty())
}

pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_32_random_bytes() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(decode(&a).unwrap().len(), KEY_BYTES);
    }

    #[test]
    fn derived_key_matches_the_documented_formula() {
        // Computed independently: printf 'dev-1' | openssl dgst -sha256 -hmac 'group-key' -binary | base64
        let derived = derive(b"group-key", "dev-1");
        assert_eq!(derived, "/yXnKjERniLRE/oqYm6c5G+G/kSBXidPnDcfgOnNtck=");
        assert_eq!(decode(&derived).unwrap().len(), 32);
        assert_ne!(derive(b"group-key", "dev-2"), derived);
    }
}
