//! Uploaded packages and bundles: decoding and signature policy, persisting
//! the package, its icons (as content-addressed assets) and its declaration,
//! and reading them back (reference: `internal/service/plugin_decoder.go`,
//! `internal/core/plugin_manager/packages.go`, `media_transport/`).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{DaemonError, DaemonResult};
use crate::package::{
    self, decode_bundle, DecodeLimits, Dependency, PluginPackage, PluginUniqueIdentifier,
    SignatureKeys,
};
use crate::storage::Storage;
use crate::store::Store;

/// Folder of a package's assets inside the zip.
const ASSETS_DIR: &str = "_assets/";

/// Settings of the package service.
#[derive(Debug, Clone)]
pub struct PackageSettings {
    /// Largest accepted package (MAX_PLUGIN_PACKAGE_SIZE).
    pub max_package_size: u64,
    /// Largest accepted bundle (MAX_BUNDLE_PACKAGE_SIZE).
    pub max_bundle_size: u64,
    /// Refuse packages without a valid signature (FORCE_VERIFYING_SIGNATURE).
    pub force_verifying_signature: bool,
    /// Storage folder of uploaded packages (PLUGIN_PACKAGE_CACHE_PATH).
    pub package_prefix: String,
    /// Storage folder of assets (PLUGIN_MEDIA_CACHE_PATH).
    pub media_prefix: String,
}

/// The answer to an upload or a decode: `{unique_identifier, manifest,
/// verification}`.
#[derive(Debug, Clone, Serialize)]
pub struct Decoded {
    pub unique_identifier: String,
    pub manifest: Value,
    pub verification: Option<Value>,
}

/// One dependency of an uploaded bundle, as Dify's `PluginBundleDependency`
/// reads it: `{"type": "github"|"marketplace"|"package", "value": {…}}`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum BundleDependency {
    /// A GitHub release asset to fetch.
    Github {
        repo_address: String,
        repo: String,
        release: String,
        packages: String,
    },
    /// A marketplace plugin to fetch.
    Marketplace {
        organization: String,
        plugin: String,
        version: String,
    },
    /// A package the bundle carried, now uploaded.
    Package {
        unique_identifier: String,
        manifest: Value,
    },
}

/// A readme in the language picked.
#[derive(Debug, Clone, Serialize)]
pub struct Readme {
    pub content: String,
    pub language: String,
}

/// Reads, checks and keeps packages.
pub struct Packages {
    store: Store,
    storage: Arc<dyn Storage>,
    keys: Arc<SignatureKeys>,
    settings: PackageSettings,
}

fn storage_error(what: &str, e: std::io::Error) -> DaemonError {
    DaemonError::internal(format!("cannot {what}"), e)
}

/// Whether a package author looks like a tenant id, which only remote
/// (debugging) plugins may use.
fn remote_like(author: &str) -> bool {
    uuid::Uuid::parse_str(author).is_ok()
}

/// The icon fields of a declaration that name files under `_assets/`
/// (reference: `media_transport/assets.go`).
fn icon_slots(decl: &mut Value) -> Vec<&mut Value> {
    let mut out = Vec::new();
    let Some(obj) = decl.as_object_mut() else {
        return out;
    };
    for (key, provider) in obj.iter_mut() {
        match key.as_str() {
            "icon" | "icon_dark" => out.push(provider),
            "tool" | "agent_strategy" | "trigger" | "datasource" => {
                let Some(provider) = provider.as_object_mut() else {
                    continue;
                };
                for (pkey, pval) in provider.iter_mut() {
                    match pkey.as_str() {
                        "identity" => {
                            if let Some(identity) = pval.as_object_mut() {
                                for (ikey, ival) in identity.iter_mut() {
                                    if ikey == "icon" || ikey == "icon_dark" {
                                        out.push(ival);
                                    }
                                }
                            }
                        }
                        "datasources" if key == "datasource" => {
                            for ds in pval.as_array_mut().into_iter().flatten() {
                                if let Some(icon) =
                                    ds.get_mut("identity").and_then(|i| i.get_mut("icon"))
                                {
                                    out.push(icon);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            "model" => {
                let Some(model) = provider.as_object_mut() else {
                    continue;
                };
                for (mkey, mval) in model.iter_mut() {
                    if matches!(
                        mkey.as_str(),
                        "icon_small" | "icon_large" | "icon_small_dark" | "icon_large_dark"
                    ) {
                        if let Some(langs) = mval.as_object_mut() {
                            out.extend(langs.values_mut());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The asset id of a file: sha256 of its bytes then its name, in hex, plus
/// the name's extension (the reference's scheme, so ids stay stable).
fn asset_id(name: &str, data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    h.update(name.as_bytes());
    let ext = std::path::Path::new(name)
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    format!("{}{ext}", hex::encode(h.finalize()))
}

/// Asset ids are file names: no folders, no dot files.
fn valid_asset_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Whether `path` names a file below `_assets/` and nothing else: relative,
/// `/`-separated, no empty, `.` or `..` component. The lookup is by exact
/// entry name, so nothing else could be reached anyway; a path that tries is
/// refused rather than answered "not found".
pub fn valid_asset_path(path: &str) -> bool {
    !path.is_empty()
        && !path.contains(['\\', '\0'])
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// What an upload wrote, so a failure can undo exactly that.
#[derive(Default)]
struct Written {
    keys: Vec<String>,
    declarations: Vec<String>,
}

/// An embedded package decoded and accepted, waiting to be persisted.
struct Prepared {
    slot: usize,
    package: PluginPackage,
    bytes: Bytes,
    verified: bool,
}

/// Puts the bundle path in front of an embedded package's refusal.
fn in_bundle(path: &str, e: DaemonError) -> DaemonError {
    match e {
        DaemonError::BadRequest(m) => {
            DaemonError::BadRequest(format!("package {path:?} in the bundle: {m}"))
        }
        DaemonError::UniqueIdentifier(m) => {
            DaemonError::UniqueIdentifier(format!("package {path:?} in the bundle: {m}"))
        }
        other => other,
    }
}

impl Packages {
    /// A package service over the store and blob storage.
    pub fn new(
        store: Store,
        storage: Arc<dyn Storage>,
        keys: Arc<SignatureKeys>,
        settings: PackageSettings,
    ) -> Self {
        Self {
            store,
            storage,
            keys,
            settings,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &PackageSettings {
        &self.settings
    }

    /// The storage key of an uploaded package.
    pub fn package_key(&self, identifier: &str) -> String {
        format!("{}/{}", self.settings.package_prefix, identifier)
    }

    fn asset_key(&self, id: &str) -> String {
        format!("{}/{}", self.settings.media_prefix, id)
    }

    async fn decode_bytes(&self, bytes: Bytes) -> DaemonResult<(PluginPackage, Option<Value>)> {
        let limits = DecodeLimits::for_package_size(self.settings.max_package_size);
        let keys = self.keys.clone();
        tokio::task::spawn_blocking(move || {
            // A signature that does not verify counts as no signature; the
            // policy decides whether that is acceptable. A valid signature
            // without `.verification.dify.json` (every package signed before
            // that file existed, the marketplace's included) counts as
            // `langgenius`, as the reference's `DefaultVerification()`.
            let pkg = package::decode_with_keys(&bytes, &limits, &keys)?;
            let verification = pkg
                .verification
                .map(|v| serde_json::to_value(v).expect("verification serializes"));
            Ok::<_, DaemonError>((pkg, verification))
        })
        .await
        .map_err(|e| DaemonError::internal("package decoding stopped", e))?
    }

    /// Checks and keeps an uploaded package. Nothing is left behind when it
    /// is refused.
    pub async fn upload(&self, bytes: Bytes, verify_signature: bool) -> DaemonResult<Decoded> {
        if bytes.len() as u64 > self.settings.max_package_size {
            return Err(DaemonError::BadRequest(
                "file size exceeds the maximum limit".into(),
            ));
        }
        let (pkg, verification) = self.decode_bytes(bytes.clone()).await?;
        let verified = verification.is_some();
        self.check_policy(&pkg, verified, verify_signature)?;
        let mut written = Written::default();
        match self.persist(&pkg, bytes, verified, &mut written).await {
            Ok(manifest) => Ok(Decoded {
                unique_identifier: pkg.identifier.to_string(),
                manifest,
                verification,
            }),
            Err(e) => {
                self.rollback(written).await;
                Err(e)
            }
        }
    }

    /// The rules an upload must pass beyond decoding: no tenant-like author,
    /// and a valid signature when verification is asked for or forced.
    fn check_policy(
        &self,
        pkg: &PluginPackage,
        verified: bool,
        verify_signature: bool,
    ) -> DaemonResult<()> {
        if remote_like(pkg.identifier.author()) {
            return Err(DaemonError::BadRequest(
                "cannot set author to an UUID".into(),
            ));
        }
        if (self.settings.force_verifying_signature || verify_signature) && !verified {
            return Err(DaemonError::BadRequest(
                "plugin verification has been enabled, and the plugin you want to install has a bad signature".into(),
            ));
        }
        Ok(())
    }

    /// Checks a bundle and uploads every package it carries exactly as a
    /// single upload would, answering one entry per dependency in manifest
    /// order. Every package is decoded and checked before any is stored, and
    /// a failure while storing undoes what the bundle wrote.
    pub async fn upload_bundle(
        &self,
        bytes: Bytes,
        verify_signature: bool,
    ) -> DaemonResult<Vec<BundleDependency>> {
        let max = self.settings.max_bundle_size;
        if bytes.len() as u64 > max {
            return Err(DaemonError::BadRequest(
                "file size exceeds the maximum limit".into(),
            ));
        }
        // The reference bounds a bundle's uncompressed size by the same
        // number (`NewZipBundlePackagerWithSizeLimit`).
        let limits = DecodeLimits::for_package_size(max);
        let mut bundle = tokio::task::spawn_blocking(move || decode_bundle(&bytes, &limits))
            .await
            .map_err(|e| DaemonError::internal("bundle decoding stopped", e))?
            .map_err(|e| DaemonError::BadRequest(format!("failed to decode bundle: {e}")))?;

        let mut out = Vec::with_capacity(bundle.manifest.dependencies.len());
        let mut prepared = Vec::new();
        let mut taken: BTreeMap<String, Bytes> = BTreeMap::new();
        for dep in std::mem::take(&mut bundle.manifest.dependencies) {
            match dep {
                Dependency::Github(g) => out.push(BundleDependency::Github {
                    repo_address: g.repo_address(),
                    repo: g.repo(),
                    release: g.release().to_owned(),
                    packages: g.asset().to_owned(),
                }),
                Dependency::Marketplace(m) => out.push(BundleDependency::Marketplace {
                    organization: m.organization().to_owned(),
                    plugin: m.plugin().to_owned(),
                    version: m.version().to_owned(),
                }),
                Dependency::Package { path } => {
                    // Each package's bytes move out of the bundle once; a
                    // path listed twice shares them.
                    let data = match taken.get(&path) {
                        Some(b) => b.clone(),
                        None => {
                            let b = Bytes::from(bundle.assets.remove(&path).ok_or_else(|| {
                                DaemonError::BadRequest(format!(
                                    "package {path:?} not found in the bundle's _assets"
                                ))
                            })?);
                            taken.insert(path.clone(), b.clone());
                            b
                        }
                    };
                    let (package, verification) = self
                        .decode_bytes(data.clone())
                        .await
                        .map_err(|e| in_bundle(&path, e))?;
                    let verified = verification.is_some();
                    self.check_policy(&package, verified, verify_signature)
                        .map_err(|e| in_bundle(&path, e))?;
                    out.push(BundleDependency::Package {
                        unique_identifier: package.identifier.to_string(),
                        manifest: Value::Null,
                    });
                    prepared.push(Prepared {
                        slot: out.len() - 1,
                        package,
                        bytes: data,
                        verified,
                    });
                }
            }
        }

        let mut written = Written::default();
        for p in prepared {
            match self
                .persist(&p.package, p.bytes, p.verified, &mut written)
                .await
            {
                Ok(manifest) => {
                    out[p.slot] = BundleDependency::Package {
                        unique_identifier: p.package.identifier.to_string(),
                        manifest,
                    };
                }
                Err(e) => {
                    self.rollback(written).await;
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    async fn put_new(&self, key: String, data: Bytes, written: &mut Written) -> DaemonResult<()> {
        let exists = self
            .storage
            .exists(&key)
            .await
            .map_err(|e| storage_error("read storage", e))?;
        if !exists {
            self.storage
                .put(&key, data)
                .await
                .map_err(|e| storage_error("save to storage", e))?;
            written.keys.push(key);
        }
        Ok(())
    }

    async fn persist(
        &self,
        pkg: &PluginPackage,
        bytes: Bytes,
        verified: bool,
        written: &mut Written,
    ) -> DaemonResult<Value> {
        let mut declaration = serde_json::to_value(&pkg.declaration)
            .map_err(|e| DaemonError::internal("declaration does not serialize", e))?;
        if let Some(obj) = declaration.as_object_mut() {
            obj.insert("verified".into(), Value::Bool(verified));
        }
        let mut remapped: BTreeMap<String, String> = BTreeMap::new();
        let mut uploads = Vec::new();
        for slot in icon_slots(&mut declaration) {
            let Some(name) = slot.as_str().filter(|s| !s.is_empty()).map(str::to_owned) else {
                continue;
            };
            let id = match remapped.get(&name) {
                Some(id) => id.clone(),
                None => {
                    let data = pkg
                        .files
                        .get(&format!("{ASSETS_DIR}{name}"))
                        .ok_or_else(|| {
                            DaemonError::BadRequest(format!("file not found: {name}"))
                        })?;
                    let id = asset_id(&name, data);
                    uploads.push((id.clone(), Bytes::from(data.clone())));
                    remapped.insert(name, id.clone());
                    id
                }
            };
            *slot = Value::String(id);
        }
        for (id, data) in uploads {
            self.put_new(self.asset_key(&id), data, written).await?;
        }
        let identifier = pkg.identifier.to_string();
        self.put_new(self.package_key(&identifier), bytes, written)
            .await?;
        if self
            .store
            .insert_declaration(&identifier, pkg.identifier.plugin_id(), &declaration)
            .await?
        {
            written.declarations.push(identifier);
        }
        Ok(declaration)
    }

    async fn rollback(&self, written: Written) {
        for identifier in written.declarations {
            if let Err(e) = self.store.delete_unused_declaration(&identifier).await {
                tracing::error!(error = %e, identifier, "cannot undo a declaration");
            }
        }
        for key in written.keys {
            if let Err(e) = self.storage.delete(&key).await {
                tracing::error!(error = %e, key, "cannot undo a stored file");
            }
        }
    }

    /// The bytes of an uploaded package.
    pub async fn package_bytes(&self, identifier: &PluginUniqueIdentifier) -> DaemonResult<Bytes> {
        match self
            .storage
            .get(&self.package_key(&identifier.to_string()))
            .await
        {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DaemonError::BadRequest(
                "plugin package not found, please upload it firstly".into(),
            )),
            Err(e) => Err(storage_error("read a package", e)),
        }
    }

    /// Decodes an uploaded package again (the second step of Dify's local
    /// install). The manifest is the stored one, whose icons are asset ids
    /// Dify can fetch; the reference returns the raw manifest here, whose icon
    /// file names no asset route serves.
    pub async fn decode_from_identifier(
        &self,
        identifier: &PluginUniqueIdentifier,
    ) -> DaemonResult<Decoded> {
        let bytes = self.package_bytes(identifier).await?;
        let (pkg, verification) = self.decode_bytes(bytes).await?;
        let manifest = match self.store.declaration(&identifier.to_string()).await? {
            Some(stored) => stored,
            None => {
                let mut raw = serde_json::to_value(&pkg.declaration)
                    .map_err(|e| DaemonError::internal("declaration does not serialize", e))?;
                if let Some(obj) = raw.as_object_mut() {
                    obj.insert("verified".into(), Value::Bool(verification.is_some()));
                }
                raw
            }
        };
        Ok(Decoded {
            unique_identifier: identifier.to_string(),
            manifest,
            verification,
        })
    }

    /// The readme in `language`, else English, else any.
    pub async fn readme(
        &self,
        identifier: &PluginUniqueIdentifier,
        language: &str,
    ) -> DaemonResult<Readme> {
        let id = identifier.to_string();
        let mut readmes = self.store.readmes(&id).await?;
        if readmes.is_empty() {
            let bytes = self.package_bytes(identifier).await?;
            let (pkg, _) = self.decode_bytes(bytes).await?;
            readmes = pkg.readme;
            self.store.save_readmes(&id, &readmes).await?;
        }
        let picked = readmes
            .get_key_value(language)
            .or_else(|| readmes.get_key_value("en_US"))
            .or_else(|| readmes.iter().next());
        match picked {
            Some((language, content)) => Ok(Readme {
                content: content.clone(),
                language: language.clone(),
            }),
            None => Err(DaemonError::NotFound(
                "no readme content available for this plugin".into(),
            )),
        }
    }

    /// A file of an uploaded package's `_assets/` folder, by its path below
    /// that folder (reference: `PluginManager.ExtractPluginAsset`). An unknown
    /// package or a missing file is not found; the reference answers an
    /// internal error for the first and an empty success for the second,
    /// which Dify's console would then serve as an empty file.
    pub async fn package_asset(
        &self,
        identifier: &PluginUniqueIdentifier,
        path: &str,
    ) -> DaemonResult<Bytes> {
        if !valid_asset_path(path) {
            return Err(DaemonError::BadRequest(format!(
                "invalid file_path {path:?}: a relative path below _assets/ is expected"
            )));
        }
        let bytes = match self
            .storage
            .get(&self.package_key(&identifier.to_string()))
            .await
        {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DaemonError::NotFound("plugin package not found".into()))
            }
            Err(e) => return Err(storage_error("read a package", e)),
        };
        let limits = DecodeLimits::for_package_size(self.settings.max_package_size);
        let name = format!("{ASSETS_DIR}{path}");
        let found = tokio::task::spawn_blocking(move || {
            package::read_archive(&bytes, &limits).map(|archive| {
                archive
                    .entries
                    .into_iter()
                    .find(|(entry, _)| *entry == name)
                    .map(|(_, content)| Bytes::from(content))
            })
        })
        .await
        .map_err(|e| DaemonError::internal("package reading stopped", e))?
        .map_err(|e| DaemonError::internal("a stored package does not read", e))?;
        found.ok_or_else(|| DaemonError::NotFound(format!("file not found: {path}")))
    }

    /// An asset by id; `None` when there is no such asset.
    pub async fn asset(&self, id: &str) -> DaemonResult<Option<Bytes>> {
        if !valid_asset_id(id) {
            return Ok(None);
        }
        match self.storage.get(&self.asset_key(id)).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(storage_error("read an asset", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icon_slots_cover_every_provider_kind() {
        let mut decl = serde_json::json!({
            "icon": "a.svg", "icon_dark": "b.svg",
            "tool": {"identity": {"name": "t", "icon": "c.svg", "icon_dark": ""}},
            "model": {"icon_small": {"en_US": "d.svg", "zh_Hans": "e.svg"}},
            "datasource": {"identity": {"icon": "f.svg"}, "datasources": [{"identity": {"icon": "g.svg"}}]},
            "trigger": {"identity": {"icon": "h.svg"}},
            "agent_strategy": {"identity": {"icon": "i.svg"}},
            "label": {"en_US": "not an icon"}
        });
        let mut names: Vec<String> = icon_slots(&mut decl)
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .filter(|s| !s.is_empty())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["a.svg", "b.svg", "c.svg", "d.svg", "e.svg", "f.svg", "g.svg", "h.svg", "i.svg"]
        );
    }

    #[test]
    fn asset_ids_are_content_addressed_file_names() {
        let a = asset_id("icon.svg", b"<svg/>");
        assert!(a.ends_with(".svg") && a.len() == 64 + 4, "{a}");
        assert_ne!(a, asset_id("other.svg", b"<svg/>"));
        assert!(valid_asset_id(&a));
        for bad in ["", "../x", "a/b", ".hidden"] {
            assert!(!valid_asset_id(bad), "{bad}");
        }
    }
}
