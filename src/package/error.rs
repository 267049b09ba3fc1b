//! The package layer's error type. Every variant names the problem in words a
//! plugin author can act on; the daemon maps all of them to a bad request.

use std::path::PathBuf;

use crate::error::DaemonError;

/// Why a package, a manifest, a signature or a plugin folder was refused.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The compressed package exceeds the upload limit.
    #[error("plugin package is too large: {size} bytes, the limit is {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    /// The files inside the package add up to more than the limit.
    #[error(
        "plugin package size is too large, please ensure the uncompressed size is less than {limit} bytes"
    )]
    UncompressedTooLarge { limit: u64 },
    /// The package holds more entries than allowed.
    #[error("plugin package has too many entries: {count}, the limit is {limit}")]
    TooManyEntries { count: u64, limit: usize },
    /// An entry name would leave the plugin folder once extracted.
    #[error("illegal file path in plugin package: {0:?}")]
    PathTraversal(String),
    /// An entry is a symbolic link, which a package may not carry.
    #[error("symlink entries are not allowed in a plugin package: {0:?}")]
    Symlink(String),
    /// Two entries share one name.
    #[error("duplicate entry in plugin package: {0:?}")]
    DuplicateEntry(String),
    /// An entry name is not valid UTF-8 or holds a NUL byte.
    #[error("invalid entry name in plugin package: {0}")]
    InvalidEntryName(String),
    /// An entry inflates far beyond its compressed size.
    #[error(
        "compression bomb detected in plugin package: {name:?} expands more than {max_ratio} times its compressed size"
    )]
    CompressionBomb { name: String, max_ratio: u64 },
    /// The bytes are not a readable zip archive.
    #[error("invalid difypkg: {0}")]
    Malformed(String),
    /// `manifest.yaml` is absent from the package root.
    #[error("manifest.yaml not found in plugin package")]
    MissingManifest,
    /// A file referenced by the manifest or a provider file is absent.
    #[error("failed to read {kind} file: {file}")]
    MissingFile { kind: &'static str, file: String },
    /// A YAML file is larger, deeper or expands further than a package
    /// may carry (see `yaml_limits`); refused before parsing.
    #[error("{file} is refused before parsing: {reason}")]
    YamlLimit { file: String, reason: String },
    /// A YAML file does not parse into what it declares.
    #[error("failed to parse {file}: {message}")]
    Yaml { file: String, message: String },
    /// The declaration parsed but breaks a rule of the format.
    #[error("illegal plugin manifest: {0}")]
    InvalidManifest(String),
    /// An icon named by the declaration is not under `_assets/`.
    #[error("assets invalid: {0} not found")]
    MissingAsset(String),
    /// The plugin unique identifier does not parse.
    #[error(transparent)]
    Identifier(#[from] IdentifierError),
    /// The package carries no signature in its zip comment.
    #[error("plugin package is not signed")]
    Unsigned,
    /// The signature does not match any trusted key.
    #[error("plugin signature is invalid: {0}")]
    BadSignature(String),
    /// `.verification.dify.json` is not the expected JSON.
    #[error("invalid .verification.dify.json: {0}")]
    BadVerification(String),
    /// A PEM key file could not be read or parsed.
    #[error("invalid key {origin}: {message}")]
    Key { origin: String, message: String },
    /// Signing failed inside the RSA implementation.
    #[error("signing failed: {0}")]
    Sign(String),
    /// A file system operation failed while packaging or reading keys.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a string is not a plugin unique identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin_unique_identifier is not valid: {0}")]
pub struct IdentifierError(pub String);

impl From<PackageError> for DaemonError {
    fn from(err: PackageError) -> Self {
        match err {
            PackageError::Identifier(e) => DaemonError::UniqueIdentifier(e.to_string()),
            other => DaemonError::BadRequest(other.to_string()),
        }
    }
}

impl From<IdentifierError> for DaemonError {
    fn from(err: IdentifierError) -> Self {
        DaemonError::UniqueIdentifier(err.to_string())
    }
}
