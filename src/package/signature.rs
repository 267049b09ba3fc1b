//! Package signatures (reference `decoder/verifier.go`, `signer/withkey/`).
//!
//! A signed package carries `{"signature":<base64>,"time":<unix>}` as its zip
//! comment. The signed bytes are the sha256 of every entry's content, in zip
//! order (`.verification.dify.json` included), followed by the decimal time;
//! the signature is RSA PKCS#1 v1.5 over SHA-256 of those bytes.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use rsa::pkcs1::{
    DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPrivateKey, EncodeRsaPublicKey,
};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, LineEnding};
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::archive::{read_archive, Archive, DecodeLimits};
use super::PackageError;

/// The name of the file that records who authorized a signed package.
pub const VERIFICATION_FILE: &str = ".verification.dify.json";

/// The Dify official signing key (reference `pkg/license/public_key`).
const OFFICIAL_PUBLIC_KEY: &str = include_str!("keys/official.pem");

/// Who vouches for a signed plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthorizedCategory {
    /// Published by langgenius (also assumed for signed packages that carry
    /// no verification file, for historical reasons).
    #[default]
    Langgenius,
    /// A partner.
    Partner,
    /// The community.
    Community,
}

impl FromStr for AuthorizedCategory {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "langgenius" => Ok(Self::Langgenius),
            "partner" => Ok(Self::Partner),
            "community" => Ok(Self::Community),
            other => Err(format!(
                "unknown category {other:?}, expected langgenius, partner or community"
            )),
        }
    }
}

impl fmt::Display for AuthorizedCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Langgenius => "langgenius",
            Self::Partner => "partner",
            Self::Community => "community",
        })
    }
}

/// The content of `.verification.dify.json`, returned by the upload route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Verification {
    pub authorized_category: AuthorizedCategory,
}

/// The public keys a signature may verify against: the official key always,
/// plus any third-party keys.
#[derive(Debug, Clone)]
pub struct SignatureKeys {
    keys: Vec<RsaPublicKey>,
}

impl Default for SignatureKeys {
    fn default() -> Self {
        Self::official()
    }
}

impl SignatureKeys {
    /// Only the official key.
    pub fn official() -> Self {
        let key = parse_public_key(OFFICIAL_PUBLIC_KEY, "official")
            .expect("the bundled official key parses");
        Self { keys: vec![key] }
    }

    /// The official key plus one key per PEM file (PKCS#1 `RSA PUBLIC KEY`,
    /// as the reference writes them, or SPKI `PUBLIC KEY`).
    pub fn from_files(paths: &[PathBuf]) -> Result<Self, PackageError> {
        let mut keys = Self::official();
        for path in paths {
            // The reference trims the configured paths; so do we.
            let path = PathBuf::from(path.to_string_lossy().trim());
            let pem = std::fs::read_to_string(&path).map_err(|source| PackageError::Io {
                action: "cannot read public key",
                path: path.clone(),
                source,
            })?;
            keys.add_pem(&pem, &path.display().to_string())?;
        }
        Ok(keys)
    }

    /// Adds a third-party key from PEM text; `origin` names it in errors.
    pub fn add_pem(&mut self, pem: &str, origin: &str) -> Result<(), PackageError> {
        self.keys.push(parse_public_key(pem, origin)?);
        Ok(())
    }

    /// How many keys are trusted (the official one included).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: the official key is always present.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn key_error(origin: &str, e: impl fmt::Display) -> PackageError {
    PackageError::Key {
        origin: origin.to_string(),
        message: e.to_string(),
    }
}

fn parse_public_key(pem: &str, origin: &str) -> Result<RsaPublicKey, PackageError> {
    let pem = pem.trim();
    RsaPublicKey::from_pkcs1_pem(pem)
        .or_else(|_| RsaPublicKey::from_public_key_pem(pem))
        .map_err(|e| key_error(origin, e))
}

/// Parses an RSA private key (PKCS#1 `RSA PRIVATE KEY` or PKCS#8).
pub fn parse_private_key(pem: &str, origin: &str) -> Result<RsaPrivateKey, PackageError> {
    let pem = pem.trim();
    RsaPrivateKey::from_pkcs1_pem(pem)
        .or_else(|_| RsaPrivateKey::from_pkcs8_pem(pem))
        .map_err(|e| key_error(origin, e))
}

#[derive(Deserialize)]
struct SignatureComment {
    #[serde(default)]
    signature: String,
    #[serde(default)]
    time: i64,
}

/// The bytes the signature covers.
fn signed_data<'a>(contents: impl Iterator<Item = &'a [u8]>, time: i64) -> Vec<u8> {
    let mut data = Vec::new();
    for content in contents {
        data.extend_from_slice(&Sha256::digest(content));
    }
    data.extend_from_slice(time.to_string().as_bytes());
    data
}

/// Checks the signature of an already read archive. `Ok(None)` means signed
/// and valid but without a verification file.
pub fn verify_archive(
    archive: &Archive,
    keys: &SignatureKeys,
) -> Result<Option<Verification>, PackageError> {
    if archive.comment.is_empty() {
        return Err(PackageError::Unsigned);
    }
    let comment: SignatureComment = serde_json::from_slice(&archive.comment)
        .map_err(|e| PackageError::BadSignature(format!("malformed zip comment: {e}")))?;
    if comment.signature.is_empty() {
        return Err(PackageError::Unsigned);
    }
    let signature = base64::engine::general_purpose::STANDARD
        .decode(comment.signature.trim())
        .map_err(|e| PackageError::BadSignature(format!("signature is not base64: {e}")))?;
    let data = signed_data(
        archive.entries.iter().map(|(_, c)| c.as_slice()),
        comment.time,
    );
    let digest = Sha256::digest(&data);
    let trusted = keys.keys.iter().any(|key| {
        key.verify(Pkcs1v15Sign::new::<Sha256>(), &digest, &signature)
            .is_ok()
    });
    if !trusted {
        return Err(PackageError::BadSignature(
            "the signature does not match any trusted key".to_string(),
        ));
    }
    archive
        .get(VERIFICATION_FILE)
        .map(|raw| {
            serde_json::from_slice::<Verification>(raw)
                .map_err(|e| PackageError::BadVerification(e.to_string()))
        })
        .transpose()
}

/// Reads `bytes` and checks its signature against `keys`. Fails when the
/// package is unsigned or the signature matches no key; `Ok(None)` is a valid
/// signature without `.verification.dify.json`.
pub fn verify(bytes: &[u8], keys: &SignatureKeys) -> Result<Option<Verification>, PackageError> {
    let archive = read_archive(bytes, &DecodeLimits::for_local_files())?;
    verify_archive(&archive, keys)
}

/// Signs a package with `private_key_pem`, as the reference signer does: the
/// entries are rewritten in their order (a previous verification file is
/// dropped), a new `.verification.dify.json` is appended when a category is
/// given, and the signature goes into the zip comment.
pub fn sign(
    pkg_bytes: &[u8],
    private_key_pem: &str,
    authorized_category: Option<AuthorizedCategory>,
) -> Result<Vec<u8>, PackageError> {
    let key = parse_private_key(private_key_pem, "private key")?;
    let time = chrono::Utc::now().timestamp();
    sign_with_key(pkg_bytes, &key, authorized_category, time)
}

/// [`sign`] with a parsed key and a chosen signing time.
pub fn sign_with_key(
    pkg_bytes: &[u8],
    key: &RsaPrivateKey,
    authorized_category: Option<AuthorizedCategory>,
    time: i64,
) -> Result<Vec<u8>, PackageError> {
    let archive = read_archive(pkg_bytes, &DecodeLimits::for_local_files())?;
    let mut entries: Vec<(String, Vec<u8>)> = archive
        .entries
        .into_iter()
        .filter(|(name, _)| name != VERIFICATION_FILE)
        .collect();
    if let Some(category) = authorized_category {
        let body = serde_json::to_vec(&Verification {
            authorized_category: category,
        })
        .expect("verification serializes");
        entries.push((VERIFICATION_FILE.to_string(), body));
    }
    let data = signed_data(entries.iter().map(|(_, c)| c.as_slice()), time);
    let signature = key
        .sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(&data))
        .map_err(|e| PackageError::Sign(e.to_string()))?;
    let comment = serde_json::json!({
        "signature": base64::engine::general_purpose::STANDARD.encode(signature),
        "time": time,
    })
    .to_string();
    super::packager::write_zip(
        entries
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_slice(), None)),
        Some(&comment),
    )
}

/// A new RSA key pair as PKCS#1 PEM text `(private, public)`, the formats the
/// reference loads.
pub fn generate_keypair(bits: usize) -> Result<(String, String), PackageError> {
    let mut rng = rand::rngs::OsRng;
    let private =
        RsaPrivateKey::new(&mut rng, bits).map_err(|e| PackageError::Sign(e.to_string()))?;
    let public = private.to_public_key();
    let private_pem = private
        .to_pkcs1_pem(LineEnding::LF)
        .map_err(|e| PackageError::Sign(e.to_string()))?
        .to_string();
    let public_pem = public
        .to_pkcs1_pem(LineEnding::LF)
        .map_err(|e| PackageError::Sign(e.to_string()))?;
    Ok((private_pem, public_pem))
}

/// Writes a key pair next to `prefix` as `<prefix>.private.pem` and
/// `<prefix>.public.pem`, the private one readable by the owner only.
pub fn write_keypair(prefix: &Path, bits: usize) -> Result<(PathBuf, PathBuf), PackageError> {
    let (private_pem, public_pem) = generate_keypair(bits)?;
    let private_path = PathBuf::from(format!("{}.private.pem", prefix.display()));
    let public_path = PathBuf::from(format!("{}.public.pem", prefix.display()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackageError::Io {
            action: "cannot write key",
            path,
            source,
        }
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(&private_path)
        .and_then(|mut f| f.write_all(private_pem.as_bytes()))
        .map_err(io(&private_path))?;
    std::fs::write(&public_path, public_pem).map_err(io(&public_path))?;
    Ok((private_path, public_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_key_is_bundled_and_parses() {
        assert_eq!(SignatureKeys::official().len(), 1);
    }

    #[test]
    fn verification_json_matches_the_reference() {
        let v = Verification {
            authorized_category: AuthorizedCategory::Partner,
        };
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"authorized_category":"partner"}"#
        );
        assert!("nobody".parse::<AuthorizedCategory>().is_err());
    }

    #[test]
    fn bad_key_text_is_a_key_error() {
        let mut keys = SignatureKeys::official();
        let err = keys.add_pem("not a key", "mine.pem").unwrap_err();
        assert!(err.to_string().contains("mine.pem"), "{err}");
    }
}
