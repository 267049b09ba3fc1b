//! Placeholder interface of the `.difypkg` module (PROTOCOL.md §6), kept only
//! so the management API compiles and can be tested before the real package
//! module lands; the real module replaces this file wholesale.
//!
//! It decodes a zip into the manifest plus its provider declarations, computes
//! the checksum and parses unique identifiers. It does not check signatures:
//! a signed package is reported as a verification error.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::str::FromStr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::DaemonError;

/// Failures of package decoding and verification.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The bytes are not a usable package.
    #[error("{0}")]
    Invalid(String),
    /// A unique identifier does not parse.
    #[error("plugin_unique_identifier is not valid: {0}")]
    Identifier(String),
    /// The signature is missing or wrong.
    #[error("{0}")]
    Signature(String),
}

impl From<PackageError> for DaemonError {
    fn from(e: PackageError) -> Self {
        DaemonError::BadRequest(e.to_string())
    }
}

/// Bounds applied while unpacking.
#[derive(Debug, Clone)]
pub struct DecodeLimits {
    pub max_compressed: u64,
    pub max_uncompressed: u64,
    pub max_entries: usize,
    pub max_ratio: u64,
}

impl DecodeLimits {
    /// Limits for a package of at most `max` bytes.
    pub fn for_package_size(max: u64) -> Self {
        Self {
            max_compressed: max,
            max_uncompressed: max.saturating_mul(4),
            max_entries: 10_000,
            max_ratio: 100,
        }
    }
}

/// Who vouches for a signed package.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub authorized_category: String,
}

/// Public keys accepted for signatures.
#[derive(Debug, Clone, Default)]
pub struct SignatureKeys;

impl SignatureKeys {
    /// Loads extra PEM keys.
    pub fn from_files(paths: &[PathBuf]) -> Result<Self, PackageError> {
        for p in paths {
            if !p.is_file() {
                return Err(PackageError::Invalid(format!(
                    "no such key {}",
                    p.display()
                )));
            }
        }
        Ok(Self)
    }
    /// Only the official key.
    pub fn official_only() -> Self {
        Self
    }
}

/// `author/name:version@checksum`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PluginUniqueIdentifier(String);

impl PluginUniqueIdentifier {
    /// `author/name`.
    pub fn plugin_id(&self) -> &str {
        self.0.split_once(':').map(|(a, _)| a).unwrap_or(&self.0)
    }
    /// The author part (empty when absent).
    pub fn author(&self) -> &str {
        self.plugin_id()
            .split_once('/')
            .map(|(a, _)| a)
            .unwrap_or("")
    }
    /// The name part.
    pub fn name(&self) -> &str {
        let id = self.plugin_id();
        id.split_once('/').map(|(_, n)| n).unwrap_or(id)
    }
    /// The version part.
    pub fn version(&self) -> &str {
        let rest = self.0.split_once(':').map(|(_, r)| r).unwrap_or("");
        rest.split_once('@').map(|(v, _)| v).unwrap_or(rest)
    }
    /// The checksum part.
    pub fn checksum(&self) -> &str {
        self.0.split_once('@').map(|(_, c)| c).unwrap_or("")
    }
}

fn name_ok(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn version_ok(v: &str) -> bool {
    let (core, pre) = match v.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (v, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    let nums = (2..=4).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()));
    let pre_ok = pre.is_none_or(|p| {
        !p.is_empty() && p.len() <= 16 && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    });
    nums && pre_ok
}

impl FromStr for PluginUniqueIdentifier {
    type Err = PackageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PackageError::Identifier(s.to_owned());
        let (id, rest) = s.split_once(':').ok_or_else(bad)?;
        let (version, checksum) = rest.split_once('@').ok_or_else(bad)?;
        let (author, name) = match id.split_once('/') {
            Some((a, n)) => (Some(a), n),
            None => (None, id),
        };
        let ok = author.is_none_or(|a| name_ok(a, 64))
            && name_ok(name, 255)
            && version_ok(version)
            && (32..=64).contains(&checksum.len())
            && checksum
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(bad())
        }
    }
}

impl fmt::Display for PluginUniqueIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for PluginUniqueIdentifier {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PluginUniqueIdentifier {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The manifest with its provider declarations, as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PluginDeclaration(pub Value);

/// A decoded package.
#[derive(Debug, Clone)]
pub struct PluginPackage {
    pub declaration: PluginDeclaration,
    pub identifier: PluginUniqueIdentifier,
    pub checksum: String,
    pub verification: Option<Verification>,
    pub files: BTreeMap<String, Bytes>,
    pub readme: BTreeMap<String, String>,
}

fn yaml(files: &BTreeMap<String, Bytes>, path: &str) -> Result<Value, PackageError> {
    let data = files
        .get(path)
        .ok_or_else(|| PackageError::Invalid(format!("missing file {path}")))?;
    serde_yaml::from_slice(data).map_err(|e| PackageError::Invalid(format!("{path}: {e}")))
}

/// Unpacks and reads a package.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<PluginPackage, PackageError> {
    if bytes.len() as u64 > limits.max_compressed {
        return Err(PackageError::Invalid(
            "file size exceeds the maximum limit".into(),
        ));
    }
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| PackageError::Invalid(format!("not a zip file: {e}")))?;
    if archive.len() > limits.max_entries {
        return Err(PackageError::Invalid("too many entries".into()));
    }
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut f = archive
            .by_index(i)
            .map_err(|e| PackageError::Invalid(e.to_string()))?;
        if f.is_dir() {
            continue;
        }
        let mut buf = Vec::new();
        (&mut f)
            .take(limits.max_uncompressed - total + 1)
            .read_to_end(&mut buf)
            .map_err(|e| PackageError::Invalid(e.to_string()))?;
        total += buf.len() as u64;
        if total > limits.max_uncompressed {
            return Err(PackageError::Invalid(
                "package too large when unpacked".into(),
            ));
        }
        files.insert(f.name().to_owned(), Bytes::from(buf));
    }
    let mut hasher = Sha256::new();
    for (path, data) in &files {
        hasher.update(Sha256::digest(path.as_bytes()));
        hasher.update(Sha256::digest(data));
    }
    let checksum = hex::encode(hasher.finalize());

    let mut manifest = yaml(&files, "manifest.yaml")?;
    let obj = manifest
        .as_object_mut()
        .ok_or_else(|| PackageError::Invalid("manifest is not a mapping".into()))?;
    let plugins = obj.get("plugins").cloned().unwrap_or(Value::Null);
    for (list, field) in [
        ("tools", "tool"),
        ("models", "model"),
        ("endpoints", "endpoint"),
        ("agent_strategies", "agent_strategy"),
        ("datasources", "datasource"),
        ("triggers", "trigger"),
    ] {
        let Some(path) = plugins
            .get(list)
            .and_then(|l| l.get(0))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let mut provider = yaml(&files, path)?;
        for sub in ["tools", "strategies", "datasources", "events"] {
            if let Some(Value::Array(items)) = provider.get_mut(sub) {
                for item in items.iter_mut() {
                    if let Some(p) = item.as_str() {
                        *item = yaml(&files, p)?;
                    }
                }
            }
        }
        obj.insert(field.to_owned(), provider);
    }
    let field = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let identifier: PluginUniqueIdentifier = format!(
        "{}/{}:{}@{}",
        field("author"),
        field("name"),
        field("version"),
        checksum
    )
    .parse()?;
    let readme = files
        .iter()
        .filter_map(|(path, data)| {
            let lang = if path == "README.md" {
                "en_US".to_owned()
            } else {
                path.strip_prefix("readme/README_")?
                    .strip_suffix(".md")?
                    .to_owned()
            };
            Some((lang, String::from_utf8_lossy(data).into_owned()))
        })
        .collect();
    Ok(PluginPackage {
        declaration: PluginDeclaration(manifest),
        identifier,
        checksum,
        verification: None,
        files,
        readme,
    })
}

/// Checks the signature in the zip comment. Unsigned packages give `None`.
pub fn verify(bytes: &[u8], _keys: &SignatureKeys) -> Result<Option<Verification>, PackageError> {
    let archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| PackageError::Invalid(format!("not a zip file: {e}")))?;
    if archive.comment().is_empty() {
        Ok(None)
    } else {
        Err(PackageError::Signature(
            "signature checking is not available".into(),
        ))
    }
}
