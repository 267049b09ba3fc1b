//! What a debugging plugin sends before the session protocol starts: the
//! handshake with its key, then its manifest, provider declarations and
//! asset files, then `end` (reference: `pkg/entities/plugin_entities/
//! remote_entities.go`, `internal/core/debugging_runtime/
//! runtime_intialization_handlers.go`).
//!
//! This module is pure: it parses lines and accumulates the declaration.
//! Storing assets and installing the plugin are the server's job. Error texts
//! are the reference's, since the plugin author reads them in the SDK's log.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Assets a plugin may send in total (the reference allows 50 MB).
pub const MAX_ASSET_BYTES: usize = 50 * 1024 * 1024;

/// Why a registration was refused. The text is written to the plugin, then
/// the connection closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The first line is not a handshake, or its payload does not parse.
    #[error("handshake failed, invalid handshake message")]
    InvalidHandshake,
    /// The key is unknown or expired.
    #[error("handshake failed, invalid key")]
    InvalidKey,
    /// A second handshake on the same connection.
    #[error("handshake already completed")]
    HandshakeRepeated,
    /// The manifest does not parse.
    #[error("handshake failed, invalid plugin declaration: {0}")]
    InvalidManifest(String),
    /// A declaration kind was sent twice.
    #[error("{} already registered", .0.repeated_name())]
    Repeated(DeclarationKind),
    /// A provider declaration list does not parse.
    #[error("{} register failed, invalid {} declaration: {reason}", .kind.plural(), .kind.plural())]
    InvalidDeclaration {
        kind: DeclarationKind,
        reason: String,
    },
    /// An asset chunk does not parse.
    #[error("transfer assets failed, error: {0}")]
    InvalidAsset(String),
    /// An asset chunk's data is not base64.
    #[error("assets decode failed, error: {0}")]
    AssetDecode(String),
    /// The assets exceed [`MAX_ASSET_BYTES`].
    #[error("assets too large, at most 50MB")]
    AssetsTooLarge,
    /// `end` came before any provider declaration.
    #[error("no registration transferred, cannot initialize")]
    NothingRegistered,
    /// An icon names a file the plugin did not send.
    #[error("assets remap failed, invalid assets data, cannot remap: {0}")]
    Remap(String),
    /// The declaration breaks a manifest rule.
    #[error("register failed, invalid manifest detected: {0}")]
    InvalidPlugin(String),
    /// A registration line longer than the line cap.
    #[error("registration failed, line too long")]
    LineTooLong,
}

/// The declaration kinds a plugin registers, each at most once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeclarationKind {
    Manifest,
    Tool,
    Model,
    Endpoint,
    AgentStrategy,
    Datasource,
    Trigger,
}

impl DeclarationKind {
    /// The provider kinds, in the order their fields appear.
    pub const PROVIDERS: [DeclarationKind; 6] = [
        Self::Tool,
        Self::Model,
        Self::Endpoint,
        Self::AgentStrategy,
        Self::Datasource,
        Self::Trigger,
    ];

    /// The registration line type naming this kind.
    pub fn line_type(self) -> &'static str {
        match self {
            Self::Manifest => "manifest_declaration",
            Self::Tool => "tool_declaration",
            Self::Model => "model_declaration",
            Self::Endpoint => "endpoint_declaration",
            Self::AgentStrategy => "agent_strategy_declaration",
            Self::Datasource => "datasource_declaration",
            Self::Trigger => "trigger_declaration",
        }
    }

    /// The field of the plugin declaration that holds this provider.
    pub fn field(self) -> &'static str {
        match self {
            Self::Manifest => "",
            Self::Tool => "tool",
            Self::Model => "model",
            Self::Endpoint => "endpoint",
            Self::AgentStrategy => "agent_strategy",
            Self::Datasource => "datasource",
            Self::Trigger => "trigger",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Self::Manifest => "declaration",
            Self::Tool => "tools",
            Self::Model => "models",
            Self::Endpoint => "endpoints",
            Self::AgentStrategy => "agent strategies",
            Self::Datasource => "datasources",
            Self::Trigger => "triggers",
        }
    }

    fn repeated_name(self) -> &'static str {
        match self {
            Self::Manifest => "declaration",
            Self::Tool => "tools declaration",
            Self::Model => "models declaration",
            Self::Endpoint => "endpoints declaration",
            Self::AgentStrategy => "agent strategy declaration",
            Self::Datasource => "datasource declaration",
            Self::Trigger => "triggers declaration",
        }
    }

    fn from_line_type(t: &str) -> Option<Self> {
        [Self::Manifest]
            .into_iter()
            .chain(Self::PROVIDERS)
            .find(|k| k.line_type() == t)
    }
}

/// One registration line, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum RegisterLine {
    Handshake {
        key: String,
    },
    Declaration {
        kind: DeclarationKind,
        data: Value,
    },
    AssetChunk {
        filename: String,
        data: String,
    },
    End,
    /// A type this daemon does not know; ignored, as the reference does.
    Unknown(String),
}

#[derive(Deserialize)]
struct RawLine {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
}

#[derive(Deserialize)]
struct RawAsset {
    filename: String,
    data: String,
}

impl RegisterLine {
    /// Parses one line. Anything that is not `{"type":…,"data":…}` is an
    /// invalid handshake message, as in the reference.
    pub fn parse(line: &[u8]) -> Result<Self, RegisterError> {
        let raw: RawLine =
            serde_json::from_slice(line).map_err(|_| RegisterError::InvalidHandshake)?;
        Ok(match raw.kind.as_str() {
            "handshake" => {
                let key = raw
                    .data
                    .get("key")
                    .and_then(Value::as_str)
                    .filter(|k| !k.is_empty())
                    .ok_or(RegisterError::InvalidHandshake)?;
                Self::Handshake {
                    key: key.to_owned(),
                }
            }
            "asset_chunk" => {
                let asset: RawAsset = serde_json::from_value(raw.data)
                    .map_err(|e| RegisterError::InvalidAsset(e.to_string()))?;
                if asset.filename.is_empty() {
                    return Err(RegisterError::InvalidAsset("filename is empty".into()));
                }
                Self::AssetChunk {
                    filename: asset.filename,
                    data: asset.data,
                }
            }
            "end" => Self::End,
            other => match DeclarationKind::from_line_type(other) {
                Some(kind) => Self::Declaration {
                    kind,
                    data: raw.data,
                },
                None => Self::Unknown(other.to_owned()),
            },
        })
    }
}

/// The declarations and assets received so far.
#[derive(Debug, Default)]
pub struct Registration {
    manifest: Option<Map<String, Value>>,
    /// Per provider kind: sent (`Some`), with its first entry if the list was
    /// not empty.
    providers: BTreeMap<DeclarationKind, Option<Value>>,
    assets: BTreeMap<String, Vec<u8>>,
    asset_bytes: usize,
}

/// A finished registration: the declaration (icons still file names) and
/// the asset files by name.
#[derive(Debug, Clone)]
pub struct Registered {
    pub declaration: Value,
    pub assets: BTreeMap<String, Vec<u8>>,
}

impl Registration {
    /// Applies a declaration or asset line. Handshake and end are the
    /// caller's business.
    pub fn apply(&mut self, line: RegisterLine) -> Result<(), RegisterError> {
        match line {
            RegisterLine::Handshake { .. } => Err(RegisterError::HandshakeRepeated),
            RegisterLine::Declaration {
                kind: DeclarationKind::Manifest,
                data,
            } => {
                if self.manifest.is_some() {
                    return Err(RegisterError::Repeated(DeclarationKind::Manifest));
                }
                match data {
                    Value::Object(map) => {
                        self.manifest = Some(map);
                        Ok(())
                    }
                    _ => Err(RegisterError::InvalidManifest(
                        "the declaration is not an object".into(),
                    )),
                }
            }
            RegisterLine::Declaration { kind, data } => {
                if self.providers.contains_key(&kind) {
                    return Err(RegisterError::Repeated(kind));
                }
                let list = match data {
                    Value::Array(list) => list,
                    _ => {
                        return Err(RegisterError::InvalidDeclaration {
                            kind,
                            reason: "expected a list".into(),
                        })
                    }
                };
                if let Some(bad) = list.iter().find(|v| !v.is_object()) {
                    return Err(RegisterError::InvalidDeclaration {
                        kind,
                        reason: format!("expected objects, got {bad}"),
                    });
                }
                // The reference keeps only the first provider of each kind.
                self.providers.insert(kind, list.into_iter().next());
                Ok(())
            }
            RegisterLine::AssetChunk { filename, data } => {
                // Checked on the encoded size first, as the reference does,
                // so an oversize chunk is never decoded.
                if self.asset_bytes.saturating_add(data.len()) > MAX_ASSET_BYTES {
                    return Err(RegisterError::AssetsTooLarge);
                }
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data.as_bytes())
                    .map_err(|e| RegisterError::AssetDecode(e.to_string()))?;
                self.asset_bytes += bytes.len();
                self.assets.entry(filename).or_default().extend(bytes);
                Ok(())
            }
            RegisterLine::End | RegisterLine::Unknown(_) => Ok(()),
        }
    }

    /// Ends the registration: at least one provider kind must have been
    /// sent, and the manifest too.
    pub fn finish(self) -> Result<Registered, RegisterError> {
        if self.providers.is_empty() {
            return Err(RegisterError::NothingRegistered);
        }
        let mut declaration = self.manifest.ok_or_else(|| {
            RegisterError::InvalidManifest("no manifest_declaration was sent".into())
        })?;
        for (kind, provider) in self.providers {
            if let Some(provider) = provider {
                declaration.insert(kind.field().to_owned(), provider);
            }
        }
        Ok(Registered {
            declaration: Value::Object(declaration),
            assets: self.assets,
        })
    }
}

/// The icon fields of a declaration that name asset files
/// (reference: `media_transport/assets.go`). Empty and null fields are left
/// out.
pub fn icon_slots(decl: &mut Value) -> Vec<&mut Value> {
    let mut out = Vec::new();
    let Some(obj) = decl.as_object_mut() else {
        return out;
    };
    for (key, value) in obj.iter_mut() {
        match key.as_str() {
            "icon" | "icon_dark" => out.push(value),
            "tool" | "agent_strategy" | "trigger" | "datasource" => {
                let Some(provider) = value.as_object_mut() else {
                    continue;
                };
                for (pkey, pval) in provider.iter_mut() {
                    match pkey.as_str() {
                        "identity" => {
                            if let Some(identity) = pval.as_object_mut() {
                                for (ikey, ival) in identity.iter_mut() {
                                    // Datasources have no dark icon in the reference.
                                    if ikey == "icon"
                                        || (ikey == "icon_dark" && key != "datasource")
                                    {
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
                let Some(model) = value.as_object_mut() else {
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
    out.retain(|v| v.as_str().is_some_and(|s| !s.is_empty()));
    out
}

fn is_blank(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    }
}

/// Fills the defaults the reference fills before it checksums and stores a
/// declaration (`PluginDeclaration.FillInDefaultValues`): providers inherit
/// the plugin's description and tags when they have none; tags are a list.
pub fn fill_defaults(decl: &mut Value) {
    let Some(obj) = decl.as_object_mut() else {
        return;
    };
    if is_blank(obj.get("tags")) {
        obj.insert("tags".into(), Value::Array(Vec::new()));
    }
    let description = obj.get("description").cloned().unwrap_or(Value::Null);
    let tags = obj.get("tags").cloned().unwrap_or(Value::Null);
    for field in ["tool", "trigger"] {
        let Some(identity) = obj
            .get_mut(field)
            .and_then(|p| p.get_mut("identity"))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        if is_blank(identity.get("description").and_then(|d| d.get("en_US"))) {
            identity.insert("description".into(), description.clone());
        }
        if is_blank(identity.get("tags")) {
            identity.insert("tags".into(), tags.clone());
        }
    }
    if let Some(model) = obj.get_mut("model").and_then(Value::as_object_mut) {
        if matches!(model.get("description"), None | Some(Value::Null)) {
            model.insert("description".into(), description);
        }
    }
    obj.entry("verified").or_insert(Value::Bool(false));
}

fn name_ok(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Checks the manifest rules of the reference's `ManifestValidate`: author
/// and name patterns, at least one provider, and which providers exclude
/// each other.
pub fn validate(decl: &Value) -> Result<(), RegisterError> {
    let bad = |m: &str| Err(RegisterError::InvalidPlugin(m.to_owned()));
    let text = |k: &str| decl.get(k).and_then(Value::as_str).unwrap_or("");
    if !name_ok(text("author"), 64) {
        return bad("author must be alphanumeric and less than 64 characters: ^[a-z0-9_-]{1,64}$");
    }
    if !name_ok(text("name"), 128) {
        return bad(
            "plugin name must be alphanumeric and less than 128 characters: ^[a-z0-9_-]{1,128}$",
        );
    }
    if text("version").is_empty() {
        return bad("version is required");
    }
    let present: Vec<&str> = DeclarationKind::PROVIDERS
        .iter()
        .map(|k| k.field())
        .filter(|f| !matches!(decl.get(*f), None | Some(Value::Null)))
        .collect();
    if present.is_empty() {
        return bad("at least one of endpoint, model, tool, agent_strategy, trigger, or datasource must be provided");
    }
    // Only tool and endpoint may be combined; every other kind stands alone.
    for alone in ["model", "agent_strategy", "datasource", "trigger"] {
        if present.contains(&alone) && present.len() > 1 {
            return bad(&format!(
                "{alone} cannot be provided together with {}",
                present
                    .iter()
                    .filter(|p| **p != alone)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(())
}

/// The remote identifier's checksum: sha256 over the declaration's JSON
/// followed by the tenant id, lowercase hex (reference:
/// `debugging_runtime/checksum.go`). The same plugin thus gets a different
/// identifier in every tenant, and a changed declaration a new one.
///
/// The JSON is serde_json's compact form of the declaration as stored; the
/// reference hashes Go's struct encoding, whose bytes cannot be reproduced
/// from a schemaless document. Nothing compares the two: the identifier is
/// only ever read back from this daemon.
pub fn checksum(declaration: &Value, tenant_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(declaration).expect("JSON values serialize"));
    h.update(tenant_id.as_bytes());
    hex::encode(h.finalize())
}

/// `author/name:version@checksum` of a validated declaration.
pub fn identifier(declaration: &Value, checksum: &str) -> String {
    let text = |k: &str| declaration.get(k).and_then(Value::as_str).unwrap_or("");
    format!(
        "{}/{}:{}@{}",
        text("author"),
        text("name"),
        text("version"),
        checksum
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(v: Value) -> RegisterLine {
        RegisterLine::parse(v.to_string().as_bytes()).unwrap()
    }

    fn manifest() -> Value {
        json!({"author": "plugind", "name": "echo_tool", "version": "0.0.1",
               "description": {"en_US": "Echo"}, "icon": "icon.svg", "icon_dark": null})
    }

    #[test]
    fn parses_every_line_type() {
        assert_eq!(
            line(json!({"type": "handshake", "data": {"key": "k"}})),
            RegisterLine::Handshake { key: "k".into() }
        );
        for kind in DeclarationKind::PROVIDERS {
            assert!(matches!(
                line(json!({"type": kind.line_type(), "data": []})),
                RegisterLine::Declaration { kind: k, .. } if k == kind
            ));
        }
        assert_eq!(
            line(
                json!({"type": "asset_chunk", "data": {"filename": "a.svg", "data": "eA==", "end": true}})
            ),
            RegisterLine::AssetChunk {
                filename: "a.svg".into(),
                data: "eA==".into()
            }
        );
        assert_eq!(line(json!({"type": "end", "data": {}})), RegisterLine::End);
        assert_eq!(
            line(json!({"type": "later", "data": {}})),
            RegisterLine::Unknown("later".into())
        );
    }

    #[test]
    fn garbage_and_keyless_handshakes_are_invalid_handshakes() {
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            br#"{"type":"handshake","data":{}}"#,
        ] {
            assert_eq!(
                RegisterLine::parse(bad).unwrap_err(),
                RegisterError::InvalidHandshake
            );
        }
        assert_eq!(
            RegisterError::InvalidKey.to_string(),
            "handshake failed, invalid key"
        );
    }

    #[test]
    fn providers_merge_into_the_manifest_and_assets_concatenate() {
        let mut r = Registration::default();
        r.apply(line(
            json!({"type": "manifest_declaration", "data": manifest()}),
        ))
        .unwrap();
        r.apply(line(json!({"type": "tool_declaration", "data": [{"identity": {"name": "t"}}, {"ignored": true}]})))
            .unwrap();
        r.apply(line(json!({"type": "asset_chunk", "data": {"filename": "icon.svg", "data": "PHN2", "end": false}})))
            .unwrap();
        r.apply(line(json!({"type": "asset_chunk", "data": {"filename": "icon.svg", "data": "Zy8+", "end": true}})))
            .unwrap();
        let done = r.finish().unwrap();
        assert_eq!(done.declaration["tool"], json!({"identity": {"name": "t"}}));
        assert_eq!(done.assets["icon.svg"], b"<svg/>");
    }

    #[test]
    fn repeats_and_bad_shapes_are_refused_with_the_reference_text() {
        let mut r = Registration::default();
        r.apply(line(json!({"type": "tool_declaration", "data": []})))
            .unwrap();
        let err = r
            .apply(line(json!({"type": "tool_declaration", "data": []})))
            .unwrap_err();
        assert_eq!(err.to_string(), "tools declaration already registered");
        let err = r
            .apply(line(json!({"type": "model_declaration", "data": {"x": 1}})))
            .unwrap_err();
        assert!(err
            .to_string()
            .starts_with("models register failed, invalid models declaration"));
        let err = r
            .apply(line(
                json!({"type": "asset_chunk", "data": {"filename": "a", "data": "!!"}}),
            ))
            .unwrap_err();
        assert!(matches!(err, RegisterError::AssetDecode(_)));
    }

    #[test]
    fn end_without_a_provider_declaration_is_refused() {
        let mut r = Registration::default();
        r.apply(line(
            json!({"type": "manifest_declaration", "data": manifest()}),
        ))
        .unwrap();
        assert_eq!(
            r.finish().unwrap_err().to_string(),
            "no registration transferred, cannot initialize"
        );
    }

    #[test]
    fn assets_are_capped() {
        let mut r = Registration::default();
        let big = "A".repeat(MAX_ASSET_BYTES + 4);
        let err = r
            .apply(RegisterLine::AssetChunk {
                filename: "big".into(),
                data: big,
            })
            .unwrap_err();
        assert_eq!(err, RegisterError::AssetsTooLarge);
    }

    #[test]
    fn icon_slots_and_defaults() {
        let mut d = manifest();
        d["tool"] = json!({"identity": {"icon": "t.svg", "icon_dark": ""}});
        d["model"] = json!({"icon_small": {"en_US": "m.svg"}});
        let mut names: Vec<String> = icon_slots(&mut d)
            .into_iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["icon.svg", "m.svg", "t.svg"]);
        fill_defaults(&mut d);
        assert_eq!(
            d["tool"]["identity"]["description"],
            json!({"en_US": "Echo"})
        );
        assert_eq!(d["tool"]["identity"]["tags"], json!([]));
        assert_eq!(d["model"]["description"], json!({"en_US": "Echo"}));
        assert_eq!(d["verified"], json!(false));
    }

    #[test]
    fn validation_follows_the_manifest_rules() {
        let mut d = manifest();
        assert!(validate(&d)
            .unwrap_err()
            .to_string()
            .contains("at least one of"));
        d["tool"] = json!({});
        d["endpoint"] = json!({});
        validate(&d).unwrap();
        d["model"] = json!({});
        assert!(validate(&d)
            .unwrap_err()
            .to_string()
            .contains("model cannot"));
        let mut d = manifest();
        d["tool"] = json!({});
        d["author"] = json!("Not Valid");
        assert!(validate(&d).unwrap_err().to_string().contains("author"));
    }

    #[test]
    fn checksum_depends_on_declaration_and_tenant() {
        let d = manifest();
        let a = checksum(&d, "t1");
        assert_eq!(a.len(), 64);
        assert_eq!(a, checksum(&d, "t1"));
        assert_ne!(a, checksum(&d, "t2"));
        let mut e = d.clone();
        e["version"] = json!("0.0.2");
        assert_ne!(a, checksum(&e, "t1"));
        let id = identifier(&d, &a);
        assert_eq!(id, format!("plugind/echo_tool:0.0.1@{a}"));
        id.parse::<crate::package::PluginUniqueIdentifier>()
            .unwrap();
    }
}
