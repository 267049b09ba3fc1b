//! The plugin declaration: `manifest.yaml` plus every provider file it
//! references, as one value whose JSON matches the reference daemon's
//! (`pkg/entities/plugin_entities/*.go`) field for field, because the Dify API
//! server parses that JSON with pydantic.
//!
//! Go's `encoding/json` writes every field that lacks `omitempty`, nil slices
//! and pointers as `null`; the types below reproduce that with `Option`
//! (serialized as `null`) and `skip_serializing_if` only where the reference
//! says `omitempty`. Lists the reference defaults to `[]` when it decodes a
//! declaration (`show_on`, `options`, `credential_form_schemas`, `tools`, …)
//! are plain `Vec`s that read `null` as empty. So are the few lists and maps
//! the reference leaves `null` although Dify's models require a list or a
//! dict there (endpoint `settings`, OAuth schemas, `model_properties`, the
//! model provider's `supported_model_types` and `configurate_methods`): Dify
//! could not read the `null`, so nothing depends on it. Every other optional
//! list stays `null`, which Dify reads as "none".

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A loosely typed JSON object, for schemas the daemon passes through.
pub type JsonMap = serde_json::Map<String, Value>;

/// Accepts a YAML/JSON string, number or boolean as text, as the reference's
/// YAML decoder does for string fields (`version: 1.0.0` vs `"1.0.0"`).
pub(crate) mod lenient {
    use super::*;

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(opt_string(d)?.unwrap_or_default())
    }

    pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Null => None,
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "expected a string, found {other}"
                )))
            }
        })
    }
}

/// Text in several languages; `en_US` is always present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct I18nObject {
    #[serde(rename = "en_US", deserialize_with = "lenient::string")]
    pub en_us: String,
    #[serde(
        rename = "ja_JP",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient::string"
    )]
    pub ja_jp: String,
    #[serde(
        rename = "zh_Hans",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient::string"
    )]
    pub zh_hans: String,
    #[serde(
        rename = "pt_BR",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient::string"
    )]
    pub pt_br: String,
}

impl I18nObject {
    /// Every language set to the same text.
    pub fn all(text: &str) -> Self {
        Self {
            en_us: text.to_string(),
            ja_jp: text.to_string(),
            zh_hans: text.to_string(),
            pt_br: text.to_string(),
        }
    }

    /// The non-empty values with their language codes.
    pub fn values(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("en_US", self.en_us.as_str()),
            ("zh_Hans", self.zh_hans.as_str()),
            ("ja_JP", self.ja_jp.as_str()),
            ("pt_BR", self.pt_br.as_str()),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
    }
}

/// The manifest's `created_at`, kept with its original offset and written as
/// Go writes a `time.Time` (RFC 3339, fraction without trailing zeros, `Z` for
/// UTC). A missing value is Go's zero time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreatedAt(pub DateTime<FixedOffset>);

impl Default for CreatedAt {
    fn default() -> Self {
        let zero = NaiveDate::from_ymd_opt(1, 1, 1)
            .expect("valid date")
            .and_hms_opt(0, 0, 0)
            .expect("valid time");
        Self(DateTime::<Utc>::from_naive_utc_and_offset(zero, Utc).fixed_offset())
    }
}

impl CreatedAt {
    /// True for the zero time (field absent).
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// Parses the timestamp forms YAML accepts.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Some(Self(t));
        }
        if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f %:z") {
            return Some(Self(t));
        }
        for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
            if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
                return Some(Self(t.and_utc().fixed_offset()));
            }
        }
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| Self(t.and_utc().fixed_offset()))
    }
}

impl fmt::Display for CreatedAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = self.0.to_rfc3339_opts(SecondsFormat::Nanos, true);
        // Go's RFC3339Nano drops trailing zeros of the fraction, and the dot
        // with them when nothing is left.
        let (head, tail) = full.split_at(19);
        let (fraction, zone) = match tail.find(['Z', '+', '-']) {
            Some(i) => tail.split_at(i),
            None => (tail, ""),
        };
        let fraction = fraction.trim_end_matches('0').trim_end_matches('.');
        write!(f, "{head}{fraction}{zone}")
    }
}

impl Serialize for CreatedAt {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CreatedAt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match lenient::opt_string(d)? {
            None => Ok(Self::default()),
            Some(s) => Self::parse(&s)
                .ok_or_else(|| serde::de::Error::custom(format!("invalid created_at: {s:?}"))),
        }
    }
}

/// Which kind of plugin this is, derived from its providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginCategory {
    Tool,
    Model,
    Extension,
    AgentStrategy,
    Datasource,
    Trigger,
}

impl PluginCategory {
    /// The wire name (`agent-strategy`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tool => "tool",
            Self::Model => "model",
            Self::Extension => "extension",
            Self::AgentStrategy => "agent-strategy",
            Self::Datasource => "datasource",
            Self::Trigger => "trigger",
        }
    }
}

impl fmt::Display for PluginCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `resource.permission.tool`, `.node`, `.endpoint`, `.app`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EnabledPermission {
    pub enabled: bool,
}

/// `resource.permission.model`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// `resource.permission.storage`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoragePermission {
    pub enabled: bool,
    /// Bytes of plugin storage, 1 KiB to 1 GiB.
    pub size: u64,
}

/// What a plugin may call back into Dify for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginPermission {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<EnabledPermission>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelPermission>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<EnabledPermission>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EnabledPermission>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<EnabledPermission>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<StoragePermission>,
}

impl PluginPermission {
    /// Backwards tool invocation allowed.
    pub fn allow_tool(&self) -> bool {
        self.tool.as_ref().is_some_and(|p| p.enabled)
    }
    /// Any backwards model invocation allowed.
    pub fn allow_model(&self) -> bool {
        self.model.as_ref().is_some_and(|p| p.enabled)
    }
    /// Backwards LLM invocation allowed.
    pub fn allow_llm(&self) -> bool {
        self.model.as_ref().is_some_and(|p| p.enabled && p.llm)
    }
    /// Backwards text embedding allowed.
    pub fn allow_text_embedding(&self) -> bool {
        self.model
            .as_ref()
            .is_some_and(|p| p.enabled && p.text_embedding)
    }
    /// Backwards rerank allowed.
    pub fn allow_rerank(&self) -> bool {
        self.model.as_ref().is_some_and(|p| p.enabled && p.rerank)
    }
    /// Backwards TTS allowed.
    pub fn allow_tts(&self) -> bool {
        self.model.as_ref().is_some_and(|p| p.enabled && p.tts)
    }
    /// Backwards speech-to-text allowed.
    pub fn allow_speech2text(&self) -> bool {
        self.model
            .as_ref()
            .is_some_and(|p| p.enabled && p.speech2text)
    }
    /// Backwards moderation allowed.
    pub fn allow_moderation(&self) -> bool {
        self.model
            .as_ref()
            .is_some_and(|p| p.enabled && p.moderation)
    }
    /// Backwards workflow node invocation allowed.
    pub fn allow_node(&self) -> bool {
        self.node.as_ref().is_some_and(|p| p.enabled)
    }
    /// Backwards app invocation allowed.
    pub fn allow_app(&self) -> bool {
        self.app.as_ref().is_some_and(|p| p.enabled)
    }
    /// Endpoint registration allowed.
    pub fn allow_endpoint(&self) -> bool {
        self.endpoint.as_ref().is_some_and(|p| p.enabled)
    }
    /// Plugin storage allowed.
    pub fn allow_storage(&self) -> bool {
        self.storage.as_ref().is_some_and(|p| p.enabled)
    }
}

/// `resource`: memory and permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginResource {
    /// Memory in bytes.
    pub memory: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permission: Option<PluginPermission>,
}

/// `plugins`: the provider files, relative to the package root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginExtensions {
    pub tools: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub endpoints: Option<Vec<String>>,
    pub agent_strategies: Option<Vec<String>>,
    pub datasources: Option<Vec<String>>,
    pub triggers: Option<Vec<String>>,
}

/// `meta.runner`: how to start the plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginRunner {
    #[serde(deserialize_with = "lenient::string")]
    pub language: String,
    #[serde(deserialize_with = "lenient::string")]
    pub version: String,
    #[serde(deserialize_with = "lenient::string")]
    pub entrypoint: String,
}

/// `meta`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginMeta {
    #[serde(deserialize_with = "lenient::string")]
    pub version: String,
    pub arch: Option<Vec<String>>,
    pub runner: PluginRunner,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub minimum_dify_version: Option<String>,
}

/// The whole declaration of a plugin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginDeclaration {
    #[serde(deserialize_with = "lenient::string")]
    pub version: String,
    #[serde(rename = "type", deserialize_with = "lenient::string")]
    pub manifest_type: String,
    #[serde(deserialize_with = "lenient::string")]
    pub author: String,
    #[serde(deserialize_with = "lenient::string")]
    pub name: String,
    pub label: I18nObject,
    pub description: I18nObject,
    pub icon: String,
    pub icon_dark: String,
    pub resource: PluginResource,
    pub plugins: PluginExtensions,
    pub meta: PluginMeta,
    #[serde(deserialize_with = "null_as_empty")]
    pub tags: Vec<String>,
    pub created_at: CreatedAt,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privacy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Whether the package signature verified against a trusted key.
    pub verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointProviderDeclaration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelProviderDeclaration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<ToolProviderDeclaration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_strategy: Option<AgentStrategyProviderDeclaration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datasource: Option<DatasourceProviderDeclaration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerProviderDeclaration>,
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

fn null_as_empty_map<'de, D: Deserializer<'de>>(d: D) -> Result<JsonMap, D::Error> {
    Ok(Option::<JsonMap>::deserialize(d)?.unwrap_or_default())
}

fn is_empty_map(m: &Option<JsonMap>) -> bool {
    m.as_ref().is_none_or(|m| m.is_empty())
}

impl PluginDeclaration {
    /// The category, by the reference's precedence: tool, model, datasource,
    /// agent strategy, trigger, else extension.
    pub fn category(&self) -> PluginCategory {
        let listed = |v: &Option<Vec<String>>| v.as_ref().is_some_and(|v| !v.is_empty());
        let p = &self.plugins;
        if self.tool.is_some() || listed(&p.tools) {
            PluginCategory::Tool
        } else if self.model.is_some() || listed(&p.models) {
            PluginCategory::Model
        } else if self.datasource.is_some() || listed(&p.datasources) {
            PluginCategory::Datasource
        } else if self.agent_strategy.is_some() || listed(&p.agent_strategies) {
            PluginCategory::AgentStrategy
        } else if self.trigger.is_some() || listed(&p.triggers) {
            PluginCategory::Trigger
        } else {
            PluginCategory::Extension
        }
    }

    /// `author/name:version` (no `author/` when the author is empty).
    pub fn identity(&self) -> String {
        if self.author.is_empty() {
            format!("{}:{}", self.name, self.version)
        } else {
            format!("{}/{}:{}", self.author, self.name, self.version)
        }
    }

    /// `author/name`.
    pub fn plugin_id(&self) -> String {
        if self.author.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.author, self.name)
        }
    }

    /// The permissions the manifest asks for (none when absent).
    pub fn permission(&self) -> PluginPermission {
        self.resource.permission.clone().unwrap_or_default()
    }

    /// Inherits provider descriptions and tags from the plugin where the
    /// provider leaves them out, as the reference does before it serializes.
    pub fn fill_in_default_values(&mut self) {
        if let Some(tool) = &mut self.tool {
            if tool.identity.description.en_us.is_empty() {
                tool.identity.description = self.description.clone();
            }
            if tool.identity.tags.is_empty() {
                tool.identity.tags = self.tags.clone();
            }
        }
        if let Some(model) = &mut self.model {
            if model.description.is_none() {
                model.description = Some(self.description.clone());
            }
        }
        if let Some(trigger) = &mut self.trigger {
            if trigger.identity.description.en_us.is_empty() {
                trigger.identity.description = self.description.clone();
            }
            if trigger.identity.tags.is_empty() {
                trigger.identity.tags = self.tags.clone();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Shared schema pieces

/// One option of a `select` credential or setting.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfigOption {
    #[serde(deserialize_with = "lenient::string")]
    pub value: String,
    pub label: I18nObject,
}

/// A credential or setting field (`ProviderConfig` in the reference).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub config_type: String,
    pub scope: Option<String>,
    pub required: bool,
    pub default: Option<Value>,
    pub options: Option<Vec<ConfigOption>>,
    pub multiple: bool,
    pub label: I18nObject,
    pub help: Option<I18nObject>,
    pub url: Option<String>,
    pub placeholder: Option<I18nObject>,
}

/// OAuth client and credential fields.
///
/// Both lists are written as `[]` when empty: the reference writes `null`
/// for a missing one, which Dify's `OAuthSchema` (lists, not optional)
/// rejects, so no client depends on the `null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OAuthSchema {
    #[serde(deserialize_with = "null_as_empty")]
    pub client_schema: Vec<ProviderConfig>,
    #[serde(deserialize_with = "null_as_empty")]
    pub credentials_schema: Vec<ProviderConfig>,
}

/// One option of a tool, datasource or agent parameter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ParameterOption {
    #[serde(deserialize_with = "lenient::string")]
    pub value: String,
    pub label: I18nObject,
    pub icon: String,
}

/// `auto_generate` of a parameter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ParameterAutoGenerate {
    #[serde(rename = "type")]
    pub kind: String,
}

/// `template` of a parameter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ParameterTemplate {
    pub enabled: bool,
}

// ---------------------------------------------------------------------------
// Tools

/// `identity` of one tool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToolIdentity {
    pub author: String,
    pub name: String,
    pub label: I18nObject,
}

/// One tool parameter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToolParameter {
    pub name: String,
    pub label: I18nObject,
    pub human_description: I18nObject,
    #[serde(rename = "type")]
    pub parameter_type: String,
    pub scope: Option<String>,
    pub form: String,
    pub llm_description: String,
    pub required: bool,
    pub auto_generate: Option<ParameterAutoGenerate>,
    pub template: Option<ParameterTemplate>,
    pub default: Option<Value>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub multiple: bool,
    pub precision: Option<i64>,
    pub options: Option<Vec<ParameterOption>>,
}

/// `description` of one tool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToolDescription {
    pub human: I18nObject,
    #[serde(deserialize_with = "lenient::string")]
    pub llm: String,
}

/// One tool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToolDeclaration {
    pub identity: ToolIdentity,
    pub description: ToolDescription,
    pub parameters: Option<Vec<ToolParameter>>,
    #[serde(skip_serializing_if = "is_empty_map")]
    pub output_schema: Option<JsonMap>,
    pub has_runtime_parameters: bool,
}

/// `identity` of a tool, agent-strategy or trigger provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToolProviderIdentity {
    pub author: String,
    pub name: String,
    pub description: I18nObject,
    pub icon: String,
    pub icon_dark: String,
    pub label: I18nObject,
    #[serde(deserialize_with = "null_as_empty")]
    pub tags: Vec<String>,
}

/// A tool provider with its tools.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToolProviderDeclaration {
    pub identity: ToolProviderIdentity,
    #[serde(deserialize_with = "null_as_empty")]
    pub credentials_schema: Vec<ProviderConfig>,
    pub oauth_schema: Option<OAuthSchema>,
    #[serde(deserialize_with = "null_as_empty")]
    pub tools: Vec<ToolDeclaration>,
}

// ---------------------------------------------------------------------------
// Endpoints

/// One HTTP endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointDeclaration {
    pub path: String,
    pub method: String,
    pub hidden: bool,
}

/// An endpoint group with its settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointProviderDeclaration {
    /// `[]` for a group without settings. The reference writes `null`, which
    /// Dify's `EndpointProviderDeclaration.settings` (a list) rejects.
    #[serde(deserialize_with = "null_as_empty")]
    pub settings: Vec<ProviderConfig>,
    pub endpoints: Option<Vec<EndpointDeclaration>>,
}

// ---------------------------------------------------------------------------
// Models

/// One rule of `parameter_rules`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelParameterRule {
    pub name: String,
    pub use_template: Option<String>,
    pub label: Option<I18nObject>,
    #[serde(rename = "type")]
    pub parameter_type: Option<String>,
    pub help: Option<I18nObject>,
    pub required: bool,
    pub default: Option<Value>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub precision: Option<i64>,
    pub options: Option<Vec<String>>,
}

/// `pricing` of a model. The reference writes its decimals as JSON strings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelPriceConfig {
    #[serde(deserialize_with = "lenient::string")]
    pub input: String,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub output: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    pub unit: String,
    #[serde(deserialize_with = "lenient::string")]
    pub currency: String,
}

/// One predefined model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelDeclaration {
    #[serde(deserialize_with = "lenient::string")]
    pub model: String,
    pub label: I18nObject,
    pub model_type: String,
    pub features: Option<Vec<String>>,
    pub fetch_from: String,
    /// `{}` when the model file has none. The reference writes `null`, which
    /// Dify's `AIModelEntity.model_properties` (a dict) rejects.
    #[serde(deserialize_with = "null_as_empty_map")]
    pub model_properties: JsonMap,
    pub deprecated: bool,
    #[serde(deserialize_with = "null_as_empty")]
    pub parameter_rules: Vec<ModelParameterRule>,
    pub pricing: Option<ModelPriceConfig>,
}

/// `show_on` condition of a credential form field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelProviderFormShowOnObject {
    pub variable: String,
    #[serde(deserialize_with = "lenient::string")]
    pub value: String,
}

/// Option of a model credential form field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelProviderFormOption {
    pub label: I18nObject,
    #[serde(deserialize_with = "lenient::string")]
    pub value: String,
    /// `[]` when absent, as the reference's `UnmarshalYAML`/`UnmarshalJSON`
    /// default it: Dify's `FormOption.show_on` is a list, not optional.
    #[serde(deserialize_with = "null_as_empty")]
    pub show_on: Vec<ModelProviderFormShowOnObject>,
}

/// One model credential form field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelProviderCredentialFormSchema {
    pub variable: String,
    pub label: I18nObject,
    #[serde(rename = "type")]
    pub form_type: String,
    pub required: bool,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub default: Option<String>,
    /// `[]` when absent, as in the reference (`model_declaration.go`).
    #[serde(deserialize_with = "null_as_empty")]
    pub options: Vec<ModelProviderFormOption>,
    pub help: Option<I18nObject>,
    pub url: Option<String>,
    pub placeholder: Option<I18nObject>,
    pub max_length: i64,
    /// `[]` when absent, as in the reference: Dify's
    /// `CredentialFormSchema.show_on` is a list, not optional.
    #[serde(deserialize_with = "null_as_empty")]
    pub show_on: Vec<ModelProviderFormShowOnObject>,
}

/// `provider_credential_schema`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelProviderCredentialSchema {
    #[serde(deserialize_with = "null_as_empty")]
    pub credential_form_schemas: Vec<ModelProviderCredentialFormSchema>,
}

/// `model_credential_schema.model`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FieldModelSchema {
    pub label: I18nObject,
    pub placeholder: Option<I18nObject>,
}

/// `model_credential_schema`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelCredentialSchema {
    pub model: FieldModelSchema,
    #[serde(deserialize_with = "null_as_empty")]
    pub credential_form_schemas: Vec<ModelProviderCredentialFormSchema>,
}

/// `help` of a model provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelProviderHelpEntity {
    pub title: I18nObject,
    pub url: I18nObject,
}

/// Model ordering per model type, from the `_position.yaml` files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelPosition {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llm: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_embedding: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerank: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tts: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speech2text: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moderation: Option<Vec<String>>,
}

impl ModelPosition {
    /// The slot for a model type key of the provider's `models` map.
    pub fn slot(&mut self, model_type: &str) -> Option<&mut Option<Vec<String>>> {
        Some(match model_type {
            "llm" => &mut self.llm,
            "text_embedding" => &mut self.text_embedding,
            "rerank" => &mut self.rerank,
            "tts" => &mut self.tts,
            "speech2text" => &mut self.speech2text,
            "moderation" => &mut self.moderation,
            _ => return None,
        })
    }
}

/// A model provider with its predefined models.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelProviderDeclaration {
    pub provider: String,
    pub label: I18nObject,
    pub description: Option<I18nObject>,
    pub icon_small: Option<I18nObject>,
    pub icon_large: Option<I18nObject>,
    pub icon_small_dark: Option<I18nObject>,
    pub icon_large_dark: Option<I18nObject>,
    pub background: Option<String>,
    pub help: Option<ModelProviderHelpEntity>,
    /// `[]` when absent: the reference writes `null` (and refuses such a
    /// package at validation), Dify's `ProviderEntity` needs a list.
    #[serde(deserialize_with = "null_as_empty")]
    pub supported_model_types: Vec<String>,
    /// As `supported_model_types`.
    #[serde(deserialize_with = "null_as_empty")]
    pub configurate_methods: Vec<String>,
    pub provider_credential_schema: Option<ModelProviderCredentialSchema>,
    pub model_credential_schema: Option<ModelCredentialSchema>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<ModelPosition>,
    #[serde(deserialize_with = "null_as_empty")]
    pub models: Vec<ModelDeclaration>,
}

// ---------------------------------------------------------------------------
// Agent strategies

/// One agent strategy parameter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentStrategyParameter {
    pub name: String,
    pub label: I18nObject,
    pub help: I18nObject,
    #[serde(rename = "type")]
    pub parameter_type: String,
    pub auto_generate: Option<ParameterAutoGenerate>,
    pub template: Option<ParameterTemplate>,
    pub scope: Option<String>,
    pub required: bool,
    pub default: Option<Value>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub precision: Option<i64>,
    pub options: Option<Vec<ParameterOption>>,
}

/// One agent strategy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentStrategyDeclaration {
    pub identity: ToolIdentity,
    pub description: I18nObject,
    pub parameters: Option<Vec<AgentStrategyParameter>>,
    pub output_schema: Option<JsonMap>,
    #[serde(deserialize_with = "null_as_empty")]
    pub features: Vec<String>,
}

/// An agent strategy provider with its strategies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentStrategyProviderDeclaration {
    pub identity: ToolProviderIdentity,
    #[serde(deserialize_with = "null_as_empty")]
    pub strategies: Vec<AgentStrategyDeclaration>,
}

// ---------------------------------------------------------------------------
// Datasources

/// `identity` of one datasource.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatasourceIdentity {
    pub author: String,
    pub name: String,
    pub label: I18nObject,
    pub icon: String,
}

/// One datasource parameter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatasourceParameter {
    pub name: String,
    pub label: I18nObject,
    #[serde(rename = "type")]
    pub parameter_type: String,
    pub scope: Option<String>,
    pub required: bool,
    pub auto_generate: Option<ParameterAutoGenerate>,
    pub template: Option<ParameterTemplate>,
    pub default: Option<Value>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub precision: Option<i64>,
    pub options: Option<Vec<ParameterOption>>,
    pub description: I18nObject,
}

/// One datasource.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatasourceDeclaration {
    pub identity: DatasourceIdentity,
    pub parameters: Option<Vec<DatasourceParameter>>,
    pub description: I18nObject,
    #[serde(skip_serializing_if = "is_empty_map")]
    pub output_schema: Option<JsonMap>,
}

/// `identity` of a datasource provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatasourceProviderIdentity {
    pub author: String,
    pub name: String,
    pub description: I18nObject,
    pub icon: String,
    pub label: I18nObject,
    #[serde(deserialize_with = "null_as_empty")]
    pub tags: Vec<String>,
}

/// A datasource provider with its datasources.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatasourceProviderDeclaration {
    pub identity: DatasourceProviderIdentity,
    #[serde(deserialize_with = "null_as_empty")]
    pub credentials_schema: Vec<ProviderConfig>,
    pub oauth_schema: Option<OAuthSchema>,
    pub provider_type: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub datasources: Vec<DatasourceDeclaration>,
}

// ---------------------------------------------------------------------------
// Triggers

/// Option of an event parameter; its value may be any JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventParameterOption {
    pub label: I18nObject,
    pub value: Value,
}

/// One event or subscription parameter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventParameter {
    pub name: String,
    pub label: I18nObject,
    #[serde(rename = "type")]
    pub parameter_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_generate: Option<ParameterAutoGenerate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<ParameterTemplate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub required: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub multiple: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<EventParameterOption>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<I18nObject>,
}

/// `identity` of one event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventIdentity {
    pub author: String,
    pub name: String,
    pub label: I18nObject,
}

/// One trigger event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventDeclaration {
    pub identity: EventIdentity,
    pub parameters: Option<Vec<EventParameter>>,
    pub description: I18nObject,
    #[serde(skip_serializing_if = "is_empty_map")]
    pub output_schema: Option<JsonMap>,
}

/// How a trigger subscription is created.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubscriptionConstructor {
    #[serde(deserialize_with = "null_as_empty")]
    pub parameters: Vec<EventParameter>,
    #[serde(deserialize_with = "null_as_empty")]
    pub credentials_schema: Vec<ProviderConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth_schema: Option<OAuthSchema>,
}

/// A trigger provider with its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TriggerProviderDeclaration {
    pub identity: ToolProviderIdentity,
    #[serde(deserialize_with = "null_as_empty")]
    pub subscription_schema: Vec<ProviderConfig>,
    pub subscription_constructor: Option<SubscriptionConstructor>,
    #[serde(deserialize_with = "null_as_empty")]
    pub events: Vec<EventDeclaration>,
}

/// A stored declaration in the shape this version writes. Declarations are
/// stored as JSON once, at upload; one stored before a list default existed
/// (a model form field's `show_on: null`, …) reads back with the default, so
/// Dify can parse it. A value that does not read as a declaration is
/// returned as it is.
pub fn restate(stored: Value) -> Value {
    // serde would read a struct from an array too (field by field).
    if !stored.is_object() {
        return stored;
    }
    match PluginDeclaration::deserialize(&stored) {
        Ok(declaration) => serde_json::to_value(&declaration).unwrap_or(stored),
        Err(_) => stored,
    }
}

/// Languages a readme may be written in, by file name
/// (`readme/README_<lang>.md`, reference `decoder/helper.go`).
pub type Readmes = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_at_is_written_like_go() {
        let cases = [
            (
                "2024-07-12T08:03:44.658609186Z",
                "2024-07-12T08:03:44.658609186Z",
            ),
            (
                "2024-12-06T12:00:00.000000+08:00",
                "2024-12-06T12:00:00+08:00",
            ),
            ("2024-12-06T12:00:00.500+00:00", "2024-12-06T12:00:00.5Z"),
            ("2024-12-06 12:00:00", "2024-12-06T12:00:00Z"),
            ("2024-12-06", "2024-12-06T00:00:00Z"),
        ];
        for (input, want) in cases {
            assert_eq!(
                CreatedAt::parse(input).unwrap().to_string(),
                want,
                "{input}"
            );
        }
        assert_eq!(CreatedAt::default().to_string(), "0001-01-01T00:00:00Z");
        assert!(CreatedAt::parse("yesterday").is_none());
    }

    #[test]
    fn i18n_omits_empty_languages() {
        let text = I18nObject {
            en_us: "Hi".into(),
            zh_hans: "你好".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&text).unwrap(),
            r#"{"en_US":"Hi","zh_Hans":"你好"}"#
        );
    }

    #[test]
    fn model_form_lists_default_to_empty() {
        // openai_api_compatible's shape: options without show_on, a field
        // without options or show_on.
        let schema: ModelCredentialSchema = serde_yaml::from_str(
            "model: {label: {en_US: Model}}\n\
             credential_form_schemas:\n\
             - variable: mode\n  label: {en_US: Mode}\n  type: select\n  options:\n\
             \x20 - {value: chat, label: {en_US: Chat}}\n\
             - variable: api_key\n  label: {en_US: Key}\n  type: secret-input\n",
        )
        .unwrap();
        let json = serde_json::to_value(&schema).unwrap();
        let fields = json["credential_form_schemas"].as_array().unwrap();
        assert_eq!(fields[0]["show_on"], serde_json::json!([]));
        assert_eq!(fields[0]["options"][0]["show_on"], serde_json::json!([]));
        assert_eq!(fields[1]["options"], serde_json::json!([]));
        assert_eq!(fields[1]["show_on"], serde_json::json!([]));
        // And `null`, as an earlier version stored it, reads as empty too.
        let field: ModelProviderCredentialFormSchema = serde_json::from_value(serde_json::json!({
            "variable": "v", "label": {"en_US": "V"}, "type": "select",
            "options": [{"value": "a", "label": {"en_US": "A"}, "show_on": null}],
            "show_on": null,
        }))
        .unwrap();
        assert!(field.show_on.is_empty() && field.options[0].show_on.is_empty());
    }

    #[test]
    fn lists_dify_requires_are_never_null() {
        let provider: ModelProviderDeclaration =
            serde_yaml::from_str("provider: p\nlabel: {en_US: P}\n").unwrap();
        let json = serde_json::to_value(&provider).unwrap();
        assert_eq!(json["supported_model_types"], serde_json::json!([]));
        assert_eq!(json["configurate_methods"], serde_json::json!([]));
        assert_eq!(json["models"], serde_json::json!([]));

        let model: ModelDeclaration =
            serde_yaml::from_str("model: m\nmodel_type: llm\nmodel_properties: null\n").unwrap();
        let json = serde_json::to_value(&model).unwrap();
        assert_eq!(json["model_properties"], serde_json::json!({}));
        // Optional lists Dify reads as "none" stay null, as in the reference.
        assert_eq!(json["features"], Value::Null);

        let endpoint: EndpointProviderDeclaration =
            serde_yaml::from_str("settings: null\n").unwrap();
        assert_eq!(
            serde_json::to_value(&endpoint).unwrap()["settings"],
            serde_json::json!([])
        );

        let oauth: OAuthSchema = serde_yaml::from_str("client_schema: null\n").unwrap();
        assert_eq!(
            serde_json::to_value(&oauth).unwrap(),
            serde_json::json!({"client_schema": [], "credentials_schema": []})
        );
    }

    #[test]
    fn restate_fills_defaults_into_an_old_stored_declaration() {
        let stored = serde_json::json!({
            "version": "0.0.1", "type": "plugin", "author": "a", "name": "m",
            "label": {"en_US": "M"}, "description": {"en_US": "M"}, "icon": "i",
            "created_at": "2024-01-01T00:00:00Z", "tags": null, "verified": true,
            "model": {
                "provider": "m", "label": {"en_US": "M"},
                "supported_model_types": ["llm"], "configurate_methods": ["customizable-model"],
                "model_credential_schema": {
                    "model": {"label": {"en_US": "Model"}},
                    "credential_form_schemas": [{
                        "variable": "mode", "label": {"en_US": "Mode"}, "type": "select",
                        "options": [{"value": "chat", "label": {"en_US": "Chat"}, "show_on": null}],
                        "show_on": null,
                    }],
                },
                "models": [],
            },
        });
        let restated = restate(stored.clone());
        let field = &restated["model"]["model_credential_schema"]["credential_form_schemas"][0];
        assert_eq!(field["show_on"], serde_json::json!([]));
        assert_eq!(field["options"][0]["show_on"], serde_json::json!([]));
        assert_eq!(restated["tags"], serde_json::json!([]));
        assert_eq!(restated["verified"], Value::Bool(true));
        assert_eq!(
            restated["model"]["supported_model_types"],
            stored["model"]["supported_model_types"]
        );
        // What this version wrote reads back unchanged.
        assert_eq!(restate(restated.clone()), restated);
        // Anything else is left alone.
        assert_eq!(restate(serde_json::json!([1])), serde_json::json!([1]));
    }

    #[test]
    fn category_follows_the_reference_precedence() {
        let mut d = PluginDeclaration::default();
        assert_eq!(d.category(), PluginCategory::Extension);
        d.trigger = Some(Default::default());
        assert_eq!(d.category(), PluginCategory::Trigger);
        d.plugins.agent_strategies = Some(vec!["a.yaml".into()]);
        assert_eq!(d.category(), PluginCategory::AgentStrategy);
        d.datasource = Some(Default::default());
        assert_eq!(d.category(), PluginCategory::Datasource);
        d.plugins.models = Some(vec!["m.yaml".into()]);
        assert_eq!(d.category(), PluginCategory::Model);
        d.tool = Some(Default::default());
        assert_eq!(d.category(), PluginCategory::Tool);
        assert_eq!(
            serde_json::to_string(&PluginCategory::AgentStrategy).unwrap(),
            "\"agent-strategy\""
        );
    }
}
