//! The `.difybundle` format: a zip with a `manifest.yaml` of `type: bundle`
//! listing dependencies (GitHub releases, marketplace plugins, or packages
//! carried in the bundle under `_assets/`), plus the bundle's own icons and
//! READMEs (reference: `pkg/bundle_packager/`, `pkg/entities/bundle_entities/`).
//!
//! [`decode_bundle`] reads an untrusted bundle within [`DecodeLimits`] with the
//! same zip checks as a package, parses the manifest and checks every
//! dependency; the embedded packages are decoded later, one by one, like
//! single uploads.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::archive::{read_archive, DecodeLimits};
use super::manifest::is_manifest_version;
use super::PackageError;

/// Folder of the packages and icons inside a bundle.
const ASSETS_DIR: &str = "_assets/";

/// Why a bundle was refused. Every message names the problem.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The zip itself is unreadable or breaks a limit.
    #[error("{0}")]
    Archive(#[from] PackageError),
    /// No `manifest.yaml` at the bundle root.
    #[error("manifest.yaml not found in bundle")]
    MissingManifest,
    /// `manifest.yaml` is not the YAML of a bundle manifest.
    #[error("failed to parse bundle manifest.yaml: {0}")]
    Yaml(String),
    /// `manifest.yaml` declares something other than a bundle (a plugin
    /// package uploaded as a bundle, typically).
    #[error("manifest.yaml declares type {0:?}, a bundle must declare \"bundle\"")]
    NotABundle(String),
    /// A dependency names a type other than github, marketplace, package.
    #[error("dependency {index}: unknown type {kind:?}, expected github, marketplace or package")]
    UnknownType { index: usize, kind: String },
    /// A dependency's value lacks its field or has the wrong shape.
    #[error("dependency {index} ({kind}): {message}")]
    BadValue {
        index: usize,
        kind: &'static str,
        message: String,
    },
    /// A GitHub or marketplace pattern does not match its rule.
    #[error("dependency {index}: invalid {kind} pattern {pattern:?}, expected {expected}")]
    BadPattern {
        index: usize,
        kind: &'static str,
        pattern: String,
        expected: &'static str,
    },
    /// A package dependency names a file the bundle does not carry.
    #[error("dependency {index}: package {path:?} not found in the bundle's _assets")]
    MissingPackage { index: usize, path: String },
}

/// A release asset on GitHub: `owner/repo:version/asset`
/// (`GITHUB_DEPENDENCY_PATTERN` of the reference).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubPattern(String);

/// A marketplace plugin: `org/plugin:version`
/// (`MARKETPLACE_DEPENDENCY_PATTERN` of the reference).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketplacePattern(String);

/// One dependency of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dependency {
    /// A package published as a GitHub release asset.
    Github(GithubPattern),
    /// A plugin from the marketplace.
    Marketplace(MarketplacePattern),
    /// A package carried in the bundle, at `_assets/<path>`.
    Package { path: String },
}

/// The parsed `manifest.yaml` of a bundle. Descriptive fields are kept as
/// given; the reference does not validate them on upload either.
#[derive(Debug, Clone)]
pub struct BundleManifest {
    pub name: String,
    pub author: String,
    pub version: String,
    pub icon: String,
    pub labels: BTreeMap<String, String>,
    pub description: BTreeMap<String, String>,
    pub tags: Vec<String>,
    pub dependencies: Vec<Dependency>,
}

/// A decoded bundle: its manifest and the files under `_assets/`.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: BundleManifest,
    /// Files under `_assets/`, keyed by their name below that folder.
    pub assets: BTreeMap<String, Vec<u8>>,
}

impl Bundle {
    /// The bytes of the package a dependency of type package points at.
    pub fn package(&self, path: &str) -> Option<&[u8]> {
        self.assets.get(path).map(Vec::as_slice)
    }
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(default)]
    name: String,
    #[serde(default)]
    author: String,
    #[serde(default, deserialize_with = "scalar_text")]
    version: String,
    #[serde(default)]
    icon: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    description: BTreeMap<String, String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    dependencies: Option<Vec<RawDependency>>,
}

#[derive(Deserialize)]
struct RawDependency {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    value: serde_yaml::Value,
}

/// YAML reads `version: 1.0` as a number; the manifest means the text.
fn scalar_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match serde_yaml::Value::deserialize(d)? {
        serde_yaml::Value::String(s) => s,
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        _ => String::new(),
    })
}

/// `(\d{1,4}|[xX])`.
fn is_x_part(s: &str) -> bool {
    s == "x" || s == "X" || ((1..=4).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()))
}

/// The version part of a GitHub or marketplace pattern:
/// `[~^]?V`, `X.X.X` or `V-V`, V being the manifest version rule.
pub fn is_version_range(v: &str) -> bool {
    let bare = v.strip_prefix(['~', '^']).unwrap_or(v);
    if is_manifest_version(bare) {
        return true;
    }
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() == 3 && parts.iter().all(|p| is_x_part(p)) {
        return true;
    }
    v.match_indices('-')
        .any(|(i, _)| is_manifest_version(&v[..i]) && is_manifest_version(&v[i + 1..]))
}

fn is_slug(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `owner/repo:version` split into its three parts, if it has that form.
fn split_versioned(s: &str) -> Option<(&str, &str, &str)> {
    let (owner, rest) = s.split_once('/')?;
    let (name, version) = rest.split_once(':')?;
    Some((owner, name, version))
}

impl GithubPattern {
    /// Checks `^[a-z0-9_-]{1,64}/[a-z0-9_-]{1,128}:VERSION/[^/]+$`.
    pub fn parse(s: &str) -> Option<Self> {
        let (owner, repo, rest) = split_versioned(s)?;
        let (version, asset) = rest.split_once('/')?;
        let ok = is_slug(owner, 64)
            && is_slug(repo, 128)
            && is_version_range(version)
            && !asset.is_empty()
            && !asset.contains('/');
        ok.then(|| Self(s.to_owned()))
    }

    fn parts(&self) -> (&str, &str, &str, &str) {
        let (owner, repo, rest) = split_versioned(&self.0).expect("checked by parse");
        let (release, asset) = rest.split_once('/').expect("checked by parse");
        (owner, repo, release, asset)
    }

    /// `https://github.com/owner/repo`.
    pub fn repo_address(&self) -> String {
        let (owner, repo, _, _) = self.parts();
        format!("https://github.com/{owner}/{repo}")
    }

    /// `owner/repo`.
    pub fn repo(&self) -> String {
        let (owner, repo, _, _) = self.parts();
        format!("{owner}/{repo}")
    }

    /// The release (version) part.
    pub fn release(&self) -> &str {
        self.parts().2
    }

    /// The asset file name.
    pub fn asset(&self) -> &str {
        self.parts().3
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl MarketplacePattern {
    /// Checks `^[a-z0-9_-]{1,64}/[a-z0-9_-]{1,128}:VERSION$`.
    pub fn parse(s: &str) -> Option<Self> {
        let (org, plugin, version) = split_versioned(s)?;
        let ok = is_slug(org, 64) && is_slug(plugin, 128) && is_version_range(version);
        ok.then(|| Self(s.to_owned()))
    }

    fn parts(&self) -> (&str, &str, &str) {
        split_versioned(&self.0).expect("checked by parse")
    }

    /// The organization (author).
    pub fn organization(&self) -> &str {
        self.parts().0
    }

    /// The plugin name.
    pub fn plugin(&self) -> &str {
        self.parts().1
    }

    /// The version or version range.
    pub fn version(&self) -> &str {
        self.parts().2
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const GITHUB_RULE: &str = "owner/repo:version/asset.difypkg";
const MARKETPLACE_RULE: &str = "organization/plugin:version";

fn field<'a>(
    index: usize,
    kind: &'static str,
    value: &'a serde_yaml::Value,
    name: &str,
) -> Result<&'a str, BundleError> {
    match value.get(name) {
        Some(serde_yaml::Value::String(s)) if !s.is_empty() => Ok(s),
        Some(serde_yaml::Value::String(_)) | None => Err(BundleError::BadValue {
            index,
            kind,
            message: format!("value.{name} is required"),
        }),
        Some(_) => Err(BundleError::BadValue {
            index,
            kind,
            message: format!("value.{name} must be a string"),
        }),
    }
}

fn dependency(index: usize, raw: &RawDependency) -> Result<Dependency, BundleError> {
    match raw.kind.as_str() {
        "github" => {
            let kind = "github";
            let pattern = field(index, kind, &raw.value, "repo_pattern")?;
            GithubPattern::parse(pattern)
                .map(Dependency::Github)
                .ok_or_else(|| BundleError::BadPattern {
                    index,
                    kind,
                    pattern: pattern.to_owned(),
                    expected: GITHUB_RULE,
                })
        }
        "marketplace" => {
            let kind = "marketplace";
            let pattern = field(index, kind, &raw.value, "marketplace_pattern")?;
            MarketplacePattern::parse(pattern)
                .map(Dependency::Marketplace)
                .ok_or_else(|| BundleError::BadPattern {
                    index,
                    kind,
                    pattern: pattern.to_owned(),
                    expected: MARKETPLACE_RULE,
                })
        }
        "package" => Ok(Dependency::Package {
            path: field(index, "package", &raw.value, "path")?.to_owned(),
        }),
        other => Err(BundleError::UnknownType {
            index,
            kind: other.to_owned(),
        }),
    }
}

/// Parses a bundle `manifest.yaml`.
pub fn parse_manifest(yaml: &[u8]) -> Result<BundleManifest, BundleError> {
    super::yaml_limits::check("manifest.yaml", yaml)?;
    let raw: RawManifest =
        serde_yaml::from_slice(yaml).map_err(|e| BundleError::Yaml(e.to_string()))?;
    if let Some(kind) = raw.kind.as_deref() {
        if kind != "bundle" {
            return Err(BundleError::NotABundle(kind.to_owned()));
        }
    }
    let dependencies = raw
        .dependencies
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, d)| dependency(i, d))
        .collect::<Result<_, _>>()?;
    Ok(BundleManifest {
        name: raw.name,
        author: raw.author,
        version: raw.version,
        icon: raw.icon,
        labels: raw.labels,
        description: raw.description,
        tags: raw.tags.unwrap_or_default(),
        dependencies,
    })
}

/// Reads a bundle within `limits`, parses its manifest and checks that
/// every package dependency is present.
pub fn decode_bundle(bytes: &[u8], limits: &DecodeLimits) -> Result<Bundle, BundleError> {
    let archive = read_archive(bytes, limits)?;
    let manifest = archive
        .get("manifest.yaml")
        .ok_or(BundleError::MissingManifest)
        .and_then(parse_manifest)?;
    let assets: BTreeMap<String, Vec<u8>> = archive
        .entries
        .into_iter()
        .filter_map(|(name, content)| {
            name.strip_prefix(ASSETS_DIR)
                .map(|short| (short.to_owned(), content))
        })
        .collect();
    for (index, dep) in manifest.dependencies.iter().enumerate() {
        if let Dependency::Package { path } = dep {
            if !assets.contains_key(path) {
                return Err(BundleError::MissingPackage {
                    index,
                    path: path.clone(),
                });
            }
        }
    }
    Ok(Bundle { manifest, assets })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn zip(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, data) in files {
            w.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    const MANIFEST: &str = r#"name: kit
labels: {en_US: Kit}
description: {en_US: A kit}
icon: icon.svg
version: 0.0.1
author: someone
type: bundle
dependencies:
  - type: github
    value: {repo_pattern: "langgenius/plugins:1.x.x/tool.difypkg"}
  - type: marketplace
    value: {marketplace_pattern: "langgenius/openai:^0.0.5"}
  - type: package
    value: {path: abc123}
"#;

    #[test]
    fn github_and_marketplace_patterns_split_as_the_reference() {
        let g = GithubPattern::parse("owner/repo:1.0.0/pkg.difypkg").unwrap();
        assert_eq!(g.repo_address(), "https://github.com/owner/repo");
        assert_eq!(g.repo(), "owner/repo");
        assert_eq!(g.release(), "1.0.0");
        assert_eq!(g.asset(), "pkg.difypkg");
        let m = MarketplacePattern::parse("org/plug:1.0.0-2.0.0").unwrap();
        assert_eq!(
            (m.organization(), m.plugin(), m.version()),
            ("org", "plug", "1.0.0-2.0.0")
        );
    }

    #[test]
    fn version_ranges_follow_the_reference_rule() {
        for ok in [
            "1.0.0",
            "~1.0.0",
            "^1.2.3",
            "1.x.x",
            "1.X.2",
            "1.0.0-beta",
            "1.0.0-2.0.0",
            "1.0.0-beta-2.0.0",
        ] {
            assert!(is_version_range(ok), "{ok}");
        }
        for bad in [
            "1.0",
            "1.0.0.1",
            "~1.x.x",
            "",
            "a.b.c",
            "12345.0.0",
            "1.0.0-",
        ] {
            assert!(!is_version_range(bad), "{bad}");
        }
        for bad in [
            "/repo:1.0.0/a.difypkg",
            "Owner/repo:1.0.0/a.difypkg",
            "owner/repo:1.0.0/",
            "owner/repo:1.0.0/a/b",
            "owner/repo/1.0.0/a",
        ] {
            assert!(GithubPattern::parse(bad).is_none(), "{bad}");
        }
        assert!(MarketplacePattern::parse("org/plugin:1.0.0/extra").is_none());
    }

    #[test]
    fn decodes_dependencies_in_order() {
        let bytes = zip(&[
            ("manifest.yaml", MANIFEST.as_bytes()),
            ("_assets/icon.svg", b"<svg/>"),
            ("_assets/abc123", b"not looked at here"),
            ("README.md", b"# kit"),
        ]);
        let bundle = decode_bundle(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(bundle.manifest.name, "kit");
        assert_eq!(bundle.manifest.version, "0.0.1");
        let deps = &bundle.manifest.dependencies;
        assert!(matches!(&deps[0], Dependency::Github(g) if g.asset() == "tool.difypkg"));
        assert!(matches!(&deps[1], Dependency::Marketplace(m) if m.version() == "^0.0.5"));
        assert_eq!(
            deps[2],
            Dependency::Package {
                path: "abc123".into()
            }
        );
        assert_eq!(bundle.package("abc123"), Some(&b"not looked at here"[..]));
    }

    #[test]
    fn refusals_name_the_problem() {
        let limits = DecodeLimits::default();
        let err = |files: &[(&str, &[u8])]| decode_bundle(&zip(files), &limits).unwrap_err();

        let e = err(&[("README.md", b"x")]);
        assert!(matches!(e, BundleError::MissingManifest), "{e}");

        let e = err(&[("manifest.yaml", MANIFEST.as_bytes())]);
        assert_eq!(
            e.to_string(),
            "dependency 2: package \"abc123\" not found in the bundle's _assets"
        );

        let plugin = b"type: plugin\nname: x\n";
        let e = err(&[("manifest.yaml", plugin)]);
        assert!(e.to_string().contains("\"plugin\""), "{e}");

        let unknown = b"type: bundle\ndependencies:\n  - type: npm\n    value: {}\n";
        let e = err(&[("manifest.yaml", unknown)]);
        assert!(e.to_string().contains("unknown type \"npm\""), "{e}");

        let bad = b"type: bundle\ndependencies:\n  - type: marketplace\n    value: {marketplace_pattern: \"Org/x:1\"}\n";
        let e = err(&[("manifest.yaml", bad)]);
        assert!(
            e.to_string()
                .contains("invalid marketplace pattern \"Org/x:1\""),
            "{e}"
        );

        let missing = b"type: bundle\ndependencies:\n  - type: github\n    value: {}\n";
        let e = err(&[("manifest.yaml", missing)]);
        assert_eq!(
            e.to_string(),
            "dependency 0 (github): value.repo_pattern is required"
        );

        let e = err(&[("manifest.yaml", b"dependencies: [unclosed")]);
        assert!(matches!(e, BundleError::Yaml(_)), "{e}");

        let e = err(&[("manifest.yaml", b"type: bundle\n"), ("../evil", b"x")]);
        assert!(
            matches!(e, BundleError::Archive(PackageError::PathTraversal(_))),
            "{e}"
        );

        let e = decode_bundle(b"not a zip", &limits).unwrap_err();
        assert!(matches!(e, BundleError::Archive(_)), "{e}");
    }

    #[test]
    fn a_deeply_nested_manifest_is_refused_before_parsing() {
        let deep = "[".repeat(100_000);
        let e = parse_manifest(deep.as_bytes()).unwrap_err();
        assert!(
            matches!(e, BundleError::Archive(PackageError::YamlLimit { .. })),
            "{e}"
        );
    }
}
