//! Provider credentials sealed at rest with XChaCha20-Poly1305.
//!
//! The 256-bit key is SHA-256 over a domain label and MCP_ENCRYPTION_KEY (or
//! SERVER_KEY when that is unset), so any high-entropy string works as the
//! setting. A sealed value is base64 of the 24-byte random nonce followed by
//! the ciphertext; the record id is bound as associated data, so a sealed
//! value copied onto another server's row does not open.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use crate::settings::Settings;

const LABEL: &[u8] = b"plugind/mcp/credentials/v1\0";
const NONCE_LEN: usize = 24;

/// Why a sealed value does not open.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealed value is not valid base64 or too short")]
    Malformed,
    #[error("sealed value does not authenticate")]
    Forged,
}

/// Seals and opens credentials with the daemon's key.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(***)")
    }
}

impl Sealer {
    /// A sealer keyed by `secret`.
    pub fn new(secret: &str) -> Self {
        let key = Sha256::new()
            .chain_update(LABEL)
            .chain_update(secret.as_bytes())
            .finalize();
        Self {
            cipher: XChaCha20Poly1305::new(&key),
        }
    }

    /// The sealer of the settings: MCP_ENCRYPTION_KEY, else SERVER_KEY.
    pub fn from_settings(settings: &Settings) -> Self {
        match &settings.mcp_encryption_key {
            Some(key) => Self::new(key.expose()),
            None => Self::new(settings.server_key.expose()),
        }
    }

    /// Seals `plain` for the record `aad`.
    pub fn seal(&self, plain: &[u8], aad: &str) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: aad.as_bytes(),
                },
            )
            .expect("in-memory encryption does not fail");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        STANDARD.encode(out)
    }

    /// Opens a value sealed for the record `aad`.
    pub fn open(&self, sealed: &str, aad: &str) -> Result<Vec<u8>, SealError> {
        let bytes = STANDARD.decode(sealed).map_err(|_| SealError::Malformed)?;
        if bytes.len() < NONCE_LEN + 16 {
            return Err(SealError::Malformed);
        }
        let (nonce, body) = bytes.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Forged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_fresh_nonces() {
        let s = Sealer::new("key");
        let a = s.seal(b"{\"api_key\":\"x\"}", "srv1");
        let b = s.seal(b"{\"api_key\":\"x\"}", "srv1");
        assert_ne!(a, b, "each seal uses a new nonce");
        assert!(!a.contains("api_key"));
        assert_eq!(s.open(&a, "srv1").unwrap(), b"{\"api_key\":\"x\"}");
    }

    #[test]
    fn wrong_key_record_or_bytes_do_not_open() {
        let s = Sealer::new("key");
        let sealed = s.seal(b"secret", "srv1");
        assert!(matches!(
            Sealer::new("other").open(&sealed, "srv1"),
            Err(SealError::Forged)
        ));
        assert!(matches!(s.open(&sealed, "srv2"), Err(SealError::Forged)));
        let mut raw = STANDARD.decode(&sealed).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(matches!(
            s.open(&STANDARD.encode(raw), "srv1"),
            Err(SealError::Forged)
        ));
        assert!(matches!(s.open("!!", "srv1"), Err(SealError::Malformed)));
    }
}
