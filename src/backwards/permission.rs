//! The manifest's `resource.permission` block and the per-type check made
//! before any backwards call is forwarded
//! (reference: `backwards_invocation/task.go::permissionMapping`,
//! `plugin_declaration.go::PluginPermissionRequirement`).

use serde::Deserialize;

use super::InvokeType;

/// `resource.permission` of a plugin manifest. Missing blocks deny.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Permission {
    pub tool: Option<Enabled>,
    pub model: Option<ModelPermission>,
    pub node: Option<Enabled>,
    pub endpoint: Option<Enabled>,
    pub app: Option<Enabled>,
    pub storage: Option<StoragePermission>,
}

/// A permission block that is only a switch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Enabled {
    pub enabled: bool,
}

/// `permission.model`: a master switch plus one flag per model type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ModelPermission {
    pub enabled: bool,
    pub llm: bool,
    pub text_embedding: bool,
    pub rerank: bool,
    pub tts: bool,
    pub speech2text: bool,
    pub moderation: bool,
}

/// `permission.storage`: a switch and the quota in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct StoragePermission {
    pub enabled: bool,
    pub size: u64,
}

impl Permission {
    /// Reads the permission block as the manifest JSON holds it. `null`, a
    /// missing block or a malformed one grants nothing.
    pub fn from_json(value: &serde_json::Value) -> Self {
        serde_json::from_value(value.clone()).unwrap_or_default()
    }

    fn model_flag(&self, flag: impl Fn(&ModelPermission) -> bool) -> bool {
        self.model.as_ref().is_some_and(|m| m.enabled && flag(m))
    }

    fn switch(block: &Option<Enabled>) -> bool {
        block.as_ref().is_some_and(|b| b.enabled)
    }

    /// Whether the plugin may register endpoints.
    pub fn allows_endpoint(&self) -> bool {
        Self::switch(&self.endpoint)
    }

    /// The storage quota the manifest declares, if storage is declared.
    pub fn storage_size(&self) -> Option<u64> {
        self.storage.as_ref().map(|s| s.size)
    }

    /// Checks one invoke type; the error is the reference's refusal text,
    /// sent to the plugin as an `error` event.
    pub fn check(&self, invoke_type: &InvokeType) -> Result<(), String> {
        let (allowed, what) = match invoke_type {
            InvokeType::Tool => (Self::switch(&self.tool), "tool"),
            InvokeType::Llm | InvokeType::LlmStructuredOutput | InvokeType::SystemSummary => {
                (self.model_flag(|m| m.llm), "llm")
            }
            InvokeType::TextEmbedding | InvokeType::MultimodalEmbedding => {
                (self.model_flag(|m| m.text_embedding), "text-embedding")
            }
            InvokeType::Rerank | InvokeType::MultimodalRerank => {
                (self.model_flag(|m| m.rerank), "rerank")
            }
            InvokeType::Tts => (self.model_flag(|m| m.tts), "tts"),
            InvokeType::Speech2Text => (self.model_flag(|m| m.speech2text), "speech2text"),
            InvokeType::Moderation => (self.model_flag(|m| m.moderation), "moderation"),
            InvokeType::NodeParameterExtractor | InvokeType::NodeQuestionClassifier => {
                (Self::switch(&self.node), "node")
            }
            InvokeType::App | InvokeType::FetchApp => (Self::switch(&self.app), "app"),
            InvokeType::Storage => (self.storage.as_ref().is_some_and(|s| s.enabled), "storage"),
            // The reference lets every plugin request an upload URL.
            InvokeType::UploadFile => (true, "storage"),
            // `encrypt` is the daemon's own call, never the plugin's.
            InvokeType::Encrypt | InvokeType::Other(_) => {
                return Err(format!("unsupported invoke type: {}", invoke_type.as_str()))
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "permission denied, you need to enable {what} access in plugin manifest"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nothing_declared_denies_everything_but_upload() {
        let p = Permission::from_json(&serde_json::Value::Null);
        assert_eq!(
            p.check(&InvokeType::Tool).unwrap_err(),
            "permission denied, you need to enable tool access in plugin manifest"
        );
        assert!(p.check(&InvokeType::UploadFile).is_ok());
    }

    #[test]
    fn model_flags_need_the_master_switch() {
        let p = Permission::from_json(&json!({"model": {"enabled": false, "llm": true}}));
        assert!(p.check(&InvokeType::Llm).is_err());
        let p = Permission::from_json(&json!({"model": {"enabled": true, "llm": true}}));
        assert!(p.check(&InvokeType::Llm).is_ok());
        assert!(p.check(&InvokeType::SystemSummary).is_ok());
        assert_eq!(
            p.check(&InvokeType::MultimodalEmbedding).unwrap_err(),
            "permission denied, you need to enable text-embedding access in plugin manifest"
        );
    }

    #[test]
    fn unknown_and_encrypt_types_are_unsupported() {
        let p = Permission::from_json(&json!({"tool": {"enabled": true}}));
        assert_eq!(
            p.check(&InvokeType::Encrypt).unwrap_err(),
            "unsupported invoke type: encrypt"
        );
        assert_eq!(
            p.check(&InvokeType::parse("teleport")).unwrap_err(),
            "unsupported invoke type: teleport"
        );
    }

    #[test]
    fn storage_size_is_read() {
        let p = Permission::from_json(&json!({"storage": {"enabled": true, "size": 2048}}));
        assert!(p.check(&InvokeType::Storage).is_ok());
        assert_eq!(p.storage_size(), Some(2048));
    }
}
