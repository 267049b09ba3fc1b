//! The `.difypkg` format (and the `.difybundle` around it): zip reading, manifest and declarations, checksum,
//! unique identifiers and signatures (PROTOCOL.md §6).
//!
//! [`decode`] is the one entry point for untrusted uploads: it reads the zip
//! within [`DecodeLimits`], resolves the declaration, validates it, computes
//! the checksum and identifier, and checks the signature.

pub mod archive;
pub mod bundle;
pub mod checksum;
pub mod cli;
pub mod declaration;
mod error;
pub mod identifier;
pub mod manifest;
pub mod packager;
pub mod signature;
pub mod yaml_limits;

use std::collections::BTreeMap;

pub use archive::{read_archive, Archive, DecodeLimits};
pub use bundle::{decode_bundle, Bundle, BundleError, BundleManifest, Dependency};
pub use checksum::checksum;
pub use declaration::{I18nObject, PluginCategory, PluginDeclaration, PluginPermission};
pub use error::{IdentifierError, PackageError};
pub use identifier::PluginUniqueIdentifier;
pub use packager::package_dir;
pub use signature::{
    sign, verify, AuthorizedCategory, SignatureKeys, Verification, VERIFICATION_FILE,
};

/// A decoded, validated package.
#[derive(Debug, Clone)]
pub struct PluginPackage {
    /// The resolved declaration; `verified` reflects the signature check.
    pub declaration: PluginDeclaration,
    /// `author/name:version@checksum`.
    pub identifier: PluginUniqueIdentifier,
    /// The package checksum (PROTOCOL.md §6).
    pub checksum: String,
    /// Who vouches for the package, when its signature verified. A signed
    /// package without a verification file counts as `langgenius`, as the
    /// reference's upload route reports it.
    pub verification: Option<Verification>,
    /// Every file, by name.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Readmes by language: `README.md` is `en_US`, the others come from
    /// `readme/README_<lang>.md`.
    pub readme: BTreeMap<String, String>,
}

impl PluginPackage {
    /// The files under `_assets/`, keyed by their name below that folder.
    pub fn assets(&self) -> BTreeMap<&str, &[u8]> {
        self.files
            .iter()
            .filter_map(|(name, content)| {
                name.strip_prefix("_assets/")
                    .map(|short| (short, content.as_slice()))
            })
            .collect()
    }

    /// The plugin's category.
    pub fn category(&self) -> PluginCategory {
        self.declaration.category()
    }
}

/// Decodes an uploaded package, checking its signature against the official
/// key only (the reference's default).
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<PluginPackage, PackageError> {
    decode_with_keys(bytes, limits, &SignatureKeys::official())
}

/// Decodes an uploaded package, checking its signature against `keys`.
/// An unsigned or wrongly signed package still decodes, with
/// `declaration.verified == false` and no verification.
pub fn decode_with_keys(
    bytes: &[u8],
    limits: &DecodeLimits,
    keys: &SignatureKeys,
) -> Result<PluginPackage, PackageError> {
    let archive = read_archive(bytes, limits)?;
    let mut declaration = manifest::resolve(archive.entries.as_slice())?;
    manifest::validate(&declaration)?;
    manifest::check_assets(&declaration, archive.entries.as_slice())?;

    let checksum = checksum::checksum(
        archive
            .entries
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_slice())),
    );
    let identifier = PluginUniqueIdentifier::new(
        &declaration.author,
        &declaration.name,
        &declaration.version,
        &checksum,
    )?;
    let verification = match signature::verify_archive(&archive, keys) {
        Ok(found) => {
            declaration.verified = true;
            Some(found.unwrap_or_default())
        }
        Err(_) => None,
    };
    let readme = manifest::readmes(archive.entries.as_slice());
    Ok(PluginPackage {
        declaration,
        identifier,
        checksum,
        verification,
        files: archive.entries.into_iter().collect(),
        readme,
    })
}
