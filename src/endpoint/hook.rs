//! Hook ids: the unguessable part of an endpoint's public URL `/e/{hook_id}`.
//!
//! The reference draws 16 lowercase letters (about 75 bits). Anyone who knows
//! a hook id can call the plugin, so plugind draws 160 bits from the
//! operating system's generator instead.

use rand::rngs::OsRng;
use rand::RngCore;

/// Random bytes in a hook id.
const HOOK_ID_BYTES: usize = 20;

/// A fresh hook id: 40 lowercase hex characters (160 random bits).
pub fn new_hook_id() -> String {
    let mut bytes = [0u8; HOOK_ID_BYTES];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Whether `s` could be a hook id. Used to refuse odd ids before they reach
/// the store; the reference's own 16-letter ids stay valid so a database
/// migrated from the Go daemon keeps serving.
pub fn is_plausible_hook_id(s: &str) -> bool {
    (1..=127).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn hook_ids_carry_160_bits_as_lowercase_hex() {
        let id = new_hook_id();
        assert_eq!(id.len(), 40);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(is_plausible_hook_id(&id));
    }

    #[test]
    fn hook_ids_do_not_repeat() {
        let ids: HashSet<String> = (0..1000).map(|_| new_hook_id()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn reference_ids_are_plausible_and_odd_ones_are_not() {
        assert!(is_plausible_hook_id("abcdefghijklmnop"));
        assert!(!is_plausible_hook_id(""));
        assert!(!is_plausible_hook_id("a/b"));
        assert!(!is_plausible_hook_id(&"a".repeat(128)));
    }
}
