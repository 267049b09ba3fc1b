//! From package files to one [`PluginDeclaration`]: `manifest.yaml`, then each
//! provider file it lists and the files those list (tools, models and their
//! position files, endpoints, agent strategies, datasources, trigger events),
//! following `pkg/plugin_packager/decoder/helper.go`. Also the rules a
//! declaration must satisfy and the icons it must ship.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value as Yaml};

use super::declaration::*;
use super::PackageError;

/// Read access to the files of a package, by exact name, in zip order.
pub trait PackageFiles {
    /// The content of `name`, if the package has it.
    fn file(&self, name: &str) -> Option<&[u8]>;
    /// Every file name, in the package's own order.
    fn names(&self) -> Vec<&str>;
}

impl PackageFiles for [(String, Vec<u8>)] {
    fn file(&self, name: &str) -> Option<&[u8]> {
        let name = name.strip_prefix("./").unwrap_or(name);
        self.iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.as_slice())
    }

    fn names(&self) -> Vec<&str> {
        self.iter().map(|(n, _)| n.as_str()).collect()
    }
}

const MODEL_TYPES: [&str; 6] = [
    "llm",
    "text_embedding",
    "rerank",
    "tts",
    "speech2text",
    "moderation",
];

fn read<'a>(
    files: &'a (impl PackageFiles + ?Sized),
    kind: &'static str,
    name: &str,
) -> Result<&'a [u8], PackageError> {
    files.file(name).ok_or_else(|| PackageError::MissingFile {
        kind,
        file: name.to_string(),
    })
}

fn yaml_error(file: &str, e: impl std::fmt::Display) -> PackageError {
    PackageError::Yaml {
        file: file.to_string(),
        message: e.to_string(),
    }
}

/// Parses `bytes` (from `file`) as YAML into `T`, within the limits of
/// [`super::yaml_limits`]: every YAML file of a package goes through here.
fn parse<T: DeserializeOwned>(file: &str, bytes: &[u8]) -> Result<T, PackageError> {
    super::yaml_limits::check(file, bytes)?;
    serde_yaml::from_slice(bytes).map_err(|e| yaml_error(file, e))
}

/// Converts an already parsed YAML node into `T`, blaming `file`.
fn convert<T: DeserializeOwned>(file: &str, node: Yaml) -> Result<T, PackageError> {
    serde_yaml::from_value(node).map_err(|e| yaml_error(file, e))
}

/// A provider file as a mapping, with `keys` taken out for separate handling.
fn provider_mapping(
    file: &str,
    bytes: &[u8],
    keys: &[&str],
) -> Result<(Mapping, Vec<Yaml>), PackageError> {
    let node: Yaml = parse(file, bytes)?;
    let mut map = match node {
        Yaml::Mapping(m) => m,
        Yaml::Null => Mapping::new(),
        _ => return Err(yaml_error(file, "expected a mapping at the top level")),
    };
    let taken = keys
        .iter()
        .map(|k| map.remove(*k).unwrap_or(Yaml::Null))
        .collect();
    Ok((map, taken))
}

/// A list node whose items are either file names (scalars) or inline
/// declarations (mappings), as tool, strategy, datasource and event lists are.
fn split_files<T: DeserializeOwned>(
    file: &str,
    node: Yaml,
) -> Result<(Vec<String>, Vec<T>), PackageError> {
    let mut names = Vec::new();
    let mut inline = Vec::new();
    if let Yaml::Sequence(items) = node {
        for item in items {
            match item {
                Yaml::String(s) => names.push(s),
                Yaml::Number(n) => names.push(n.to_string()),
                Yaml::Mapping(_) => inline.push(convert(file, item)?),
                _ => {}
            }
        }
    }
    Ok((names, inline))
}

/// A credentials/settings node: either a list of fields, or a mapping from
/// field name to field (the name is then taken from the key).
fn provider_configs(file: &str, node: Yaml) -> Result<Vec<ProviderConfig>, PackageError> {
    match node {
        Yaml::Null => Ok(Vec::new()),
        Yaml::Mapping(map) => map
            .into_iter()
            .filter(|(_, v)| v.is_mapping())
            .map(|(k, v)| {
                let mut config: ProviderConfig = convert(file, v)?;
                config.name = match k {
                    Yaml::String(s) => s,
                    other => serde_yaml::to_string(&other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                Ok(config)
            })
            .collect(),
        other => convert(file, other),
    }
}

fn is_empty_node(node: &Yaml) -> bool {
    match node {
        Yaml::Null => true,
        Yaml::String(s) => s.is_empty(),
        Yaml::Sequence(s) => s.is_empty(),
        Yaml::Mapping(m) => m.is_empty(),
        _ => false,
    }
}

fn resolve_tool(
    files: &(impl PackageFiles + ?Sized),
    file: &str,
) -> Result<ToolProviderDeclaration, PackageError> {
    let (rest, mut taken) = provider_mapping(
        file,
        read(files, "tool", file)?,
        &["credentials_schema", "credentials_for_provider", "tools"],
    )?;
    let tools = taken.pop().unwrap_or_default();
    let for_provider = taken.pop().unwrap_or_default();
    let mut credentials = taken.pop().unwrap_or_default();
    // Older providers name the field `credentials_for_provider`.
    if is_empty_node(&credentials) {
        credentials = for_provider;
    }
    let mut provider: ToolProviderDeclaration = convert(file, Yaml::Mapping(rest))?;
    provider.credentials_schema = provider_configs(file, credentials)?;
    let (tool_files, inline) = split_files::<ToolDeclaration>(file, tools)?;
    provider.tools = inline;
    for tool_file in tool_files {
        provider
            .tools
            .push(parse(&tool_file, read(files, "tool", &tool_file)?)?);
    }
    Ok(provider)
}

fn resolve_endpoint(
    files: &(impl PackageFiles + ?Sized),
    file: &str,
) -> Result<EndpointProviderDeclaration, PackageError> {
    let (rest, mut taken) = provider_mapping(file, read(files, "endpoint", file)?, &["endpoints"])?;
    let mut provider: EndpointProviderDeclaration = convert(file, Yaml::Mapping(rest))?;
    let (endpoint_files, mut endpoints) =
        split_files::<EndpointDeclaration>(file, taken.pop().unwrap_or_default())?;
    for endpoint_file in endpoint_files {
        endpoints.push(parse(
            &endpoint_file,
            read(files, "endpoint", &endpoint_file)?,
        )?);
    }
    provider.endpoints = (!endpoints.is_empty()).then_some(endpoints);
    Ok(provider)
}

fn parameter_templates() -> &'static BTreeMap<String, ModelParameterRule> {
    static TEMPLATES: OnceLock<BTreeMap<String, ModelParameterRule>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        serde_json::from_str(include_str!("parameter_templates.json"))
            .expect("bundled parameter templates parse")
    })
}

/// Completes a parameter rule from its `use_template`, as the reference's
/// `TransformTemplate` does. Kept quirk: the label falls back to the rule
/// name *before* the template is consulted, so templates never set labels.
fn transform_rule(file: &str, rule: &mut ModelParameterRule) -> Result<(), PackageError> {
    if rule.label.as_ref().is_none_or(|l| l.en_us.is_empty()) {
        rule.label = Some(I18nObject {
            en_us: rule.name.clone(),
            ..Default::default()
        });
    }
    if let Some(name) = rule.use_template.as_deref().filter(|n| !n.is_empty()) {
        let template = parameter_templates()
            .get(name)
            .ok_or_else(|| yaml_error(file, format!("use_template {name} not found")))?;
        let t = template.clone();
        rule.parameter_type = rule.parameter_type.take().or(t.parameter_type);
        rule.help = rule.help.take().or(t.help);
        rule.default = rule.default.take().or(t.default);
        rule.min = rule.min.or(t.min);
        rule.max = rule.max.or(t.max);
        rule.precision = rule.precision.or(t.precision);
        rule.options = rule.options.take().or(t.options);
    }
    if rule.options.is_none() {
        rule.options = Some(Vec::new());
    }
    Ok(())
}

fn parse_model(file: &str, bytes: &[u8]) -> Result<ModelDeclaration, PackageError> {
    let mut model: ModelDeclaration = parse(file, bytes)?;
    finish_model(file, &mut model)?;
    Ok(model)
}

fn finish_model(file: &str, model: &mut ModelDeclaration) -> Result<(), PackageError> {
    if model.fetch_from.is_empty() {
        model.fetch_from = "predefined-model".to_string();
    }
    for rule in &mut model.parameter_rules {
        transform_rule(file, rule)?;
    }
    if model.label.en_us.is_empty() {
        model.label.en_us = model.model.clone();
    }
    Ok(())
}

/// Go's `filepath.Match`: `*` and `?` never cross `/`.
fn glob(file: &str, pattern: &str) -> Result<globset::GlobMatcher, PackageError> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| yaml_error(file, format!("bad model pattern {pattern:?}: {e}")))
}

fn resolve_model(
    files: &(impl PackageFiles + ?Sized),
    file: &str,
) -> Result<ModelProviderDeclaration, PackageError> {
    let (rest, mut taken) = provider_mapping(file, read(files, "model", file)?, &["models"])?;
    let mut provider: ModelProviderDeclaration = convert(file, Yaml::Mapping(rest))?;
    let mut patterns = Vec::new();
    match taken.pop().unwrap_or_default() {
        Yaml::Mapping(by_type) => {
            // A mapping always yields a (possibly empty) position object.
            let mut position = ModelPosition::default();
            for model_type in MODEL_TYPES {
                let Some(Yaml::Mapping(entry)) = by_type.get(model_type) else {
                    continue;
                };
                if let Some(position_file) = entry.get("position").and_then(Yaml::as_str) {
                    let list: Vec<String> =
                        parse(position_file, read(files, "position", position_file)?)?;
                    if let Some(slot) = position.slot(model_type) {
                        *slot = Some(list);
                    }
                }
                if let Some(Yaml::Sequence(predefined)) = entry.get("predefined") {
                    patterns.extend(predefined.iter().filter_map(Yaml::as_str).map(String::from));
                }
            }
            provider.position = Some(position);
        }
        Yaml::Sequence(inline) => {
            provider.models = convert(file, Yaml::Sequence(inline))?;
            for model in &mut provider.models {
                finish_model(file, model)?;
            }
        }
        _ => {}
    }
    let matchers = patterns
        .iter()
        .map(|p| glob(file, p))
        .collect::<Result<Vec<_>, _>>()?;
    for name in files.names() {
        if name.ends_with("_position.yaml") {
            continue;
        }
        for matcher in &matchers {
            if matcher.is_match(name) {
                provider
                    .models
                    .push(parse_model(name, read(files, "model", name)?)?);
            }
        }
    }
    Ok(provider)
}

fn resolve_agent_strategy(
    files: &(impl PackageFiles + ?Sized),
    file: &str,
) -> Result<AgentStrategyProviderDeclaration, PackageError> {
    let (rest, mut taken) =
        provider_mapping(file, read(files, "agent strategy", file)?, &["strategies"])?;
    let mut provider: AgentStrategyProviderDeclaration = convert(file, Yaml::Mapping(rest))?;
    let (strategy_files, inline) = split_files(file, taken.pop().unwrap_or_default())?;
    provider.strategies = inline;
    for strategy_file in strategy_files {
        provider.strategies.push(parse(
            &strategy_file,
            read(files, "agent strategy", &strategy_file)?,
        )?);
    }
    Ok(provider)
}

fn resolve_datasource(
    files: &(impl PackageFiles + ?Sized),
    file: &str,
) -> Result<DatasourceProviderDeclaration, PackageError> {
    let (rest, mut taken) = provider_mapping(
        file,
        read(files, "datasource", file)?,
        &["credentials_schema", "datasources"],
    )?;
    let datasources = taken.pop().unwrap_or_default();
    let credentials = taken.pop().unwrap_or_default();
    let mut provider: DatasourceProviderDeclaration = convert(file, Yaml::Mapping(rest))?;
    provider.credentials_schema = provider_configs(file, credentials)?;
    let (datasource_files, inline) = split_files(file, datasources)?;
    provider.datasources = inline;
    for datasource_file in datasource_files {
        provider.datasources.push(parse(
            &datasource_file,
            read(files, "datasource", &datasource_file)?,
        )?);
    }
    Ok(provider)
}

/// Like [`provider_configs`], but a mapping's values must all be mappings
/// (the reference's trigger parser is stricter than the tool one).
fn strict_provider_configs(file: &str, node: Yaml) -> Result<Vec<ProviderConfig>, PackageError> {
    if let Yaml::Mapping(map) = &node {
        if let Some((k, _)) = map.iter().find(|(_, v)| !v.is_mapping()) {
            return Err(yaml_error(
                file,
                format!(
                    "expected mapping value for key {}",
                    k.as_str().unwrap_or("?")
                ),
            ));
        }
    }
    provider_configs(file, node)
}

fn resolve_trigger(
    files: &(impl PackageFiles + ?Sized),
    file: &str,
) -> Result<TriggerProviderDeclaration, PackageError> {
    let (rest, mut taken) = provider_mapping(
        file,
        read(files, "trigger", file)?,
        &["subscription_schema", "subscription_constructor", "events"],
    )?;
    let events = taken.pop().unwrap_or_default();
    let constructor = taken.pop().unwrap_or_default();
    let schema = taken.pop().unwrap_or_default();
    let mut provider: TriggerProviderDeclaration = convert(file, Yaml::Mapping(rest))?;
    provider.subscription_schema = strict_provider_configs(file, schema)?;
    if let Yaml::Mapping(mut c) = constructor {
        let oauth = c.remove("oauth_schema").unwrap_or_default();
        let credentials = c.remove("credentials_schema").unwrap_or_default();
        let parameters = c.remove("parameters").unwrap_or_default();
        provider.subscription_constructor = Some(SubscriptionConstructor {
            parameters: match parameters {
                Yaml::Null => Vec::new(),
                p => convert(file, p)?,
            },
            credentials_schema: strict_provider_configs(file, credentials)?,
            oauth_schema: match oauth {
                Yaml::Null => None,
                o => Some(convert(file, o)?),
            },
        });
    }
    let (event_files, inline) = split_files(file, events)?;
    provider.events = inline;
    for event_file in event_files {
        provider
            .events
            .push(parse(&event_file, read(files, "event", &event_file)?)?);
    }
    Ok(provider)
}

/// Parses `manifest.yaml` and every provider file into one declaration.
/// `verified` is left false; the caller sets it after checking signatures.
pub fn resolve(files: &(impl PackageFiles + ?Sized)) -> Result<PluginDeclaration, PackageError> {
    let manifest = files
        .file("manifest.yaml")
        .ok_or(PackageError::MissingManifest)?;
    let node: Yaml = parse("manifest.yaml", manifest)?;
    if !node.is_mapping() {
        return Err(yaml_error(
            "manifest.yaml",
            "expected a mapping at the top level",
        ));
    }
    let mut dec: PluginDeclaration = convert("manifest.yaml", node)?;
    // Inline provider sections in the manifest are not part of the format;
    // only the files listed under `plugins` count.
    dec.tool = None;
    dec.model = None;
    dec.endpoint = None;
    dec.agent_strategy = None;
    dec.datasource = None;
    dec.trigger = None;
    dec.verified = false;

    let plugins = dec.plugins.clone();
    let list = |v: &Option<Vec<String>>| v.clone().unwrap_or_default();
    // As in the reference, a later file of the same kind replaces an earlier.
    for file in list(&plugins.tools) {
        dec.tool = Some(resolve_tool(files, &file)?);
    }
    for file in list(&plugins.endpoints) {
        dec.endpoint = Some(resolve_endpoint(files, &file)?);
    }
    for file in list(&plugins.models) {
        dec.model = Some(resolve_model(files, &file)?);
    }
    for file in list(&plugins.agent_strategies) {
        dec.agent_strategy = Some(resolve_agent_strategy(files, &file)?);
    }
    for file in list(&plugins.datasources) {
        dec.datasource = Some(resolve_datasource(files, &file)?);
    }
    for file in list(&plugins.triggers) {
        dec.trigger = Some(resolve_trigger(files, &file)?);
    }
    dec.fill_in_default_values();
    Ok(dec)
}

fn is_name(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `\d{1,4}(\.\d{1,4}){2}(-\w{1,16})?`, the manifest version rule.
pub fn is_manifest_version(v: &str) -> bool {
    let (numbers, suffix) = match v.split_once('-') {
        Some((n, s)) => (n, Some(s)),
        None => (v, None),
    };
    let parts: Vec<&str> = numbers.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| (1..=4).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
        && suffix.is_none_or(|s| {
            (1..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

fn invalid(msg: impl Into<String>) -> PackageError {
    PackageError::InvalidManifest(msg.into())
}

/// The rules of `ManifestValidate` plus the manifest field rules the daemon
/// relies on (type, versions, runner, architectures).
pub fn validate(dec: &PluginDeclaration) -> Result<(), PackageError> {
    if dec.manifest_type != "plugin" {
        return Err(invalid(format!(
            "type must be \"plugin\", got {:?}",
            dec.manifest_type
        )));
    }
    if !is_name(&dec.author, 64) {
        return Err(invalid(
            "author must be alphanumeric and less than 64 characters: ^[a-z0-9_-]{1,64}$",
        ));
    }
    if !is_name(&dec.name, 128) {
        return Err(invalid(
            "plugin name must be alphanumeric and less than 128 characters: ^[a-z0-9_-]{1,128}$",
        ));
    }
    if !is_manifest_version(&dec.version) {
        return Err(invalid(format!(
            "version {:?} must look like 1.2.3 or 1.2.3-beta",
            dec.version
        )));
    }
    if dec.label.en_us.is_empty() {
        return Err(invalid("label.en_US is required"));
    }
    if dec.icon.is_empty() {
        return Err(invalid("icon is required"));
    }
    if !is_manifest_version(&dec.meta.version) {
        return Err(invalid(format!(
            "meta.version {:?} must look like 1.2.3",
            dec.meta.version
        )));
    }
    if dec.meta.runner.language != "python" {
        return Err(invalid(format!(
            "meta.runner.language {:?} is not supported, use \"python\"",
            dec.meta.runner.language
        )));
    }
    if dec.meta.runner.version.is_empty() || dec.meta.runner.entrypoint.is_empty() {
        return Err(invalid(
            "meta.runner.version and meta.runner.entrypoint are required",
        ));
    }
    if let Some(arch) = dec
        .meta
        .arch
        .iter()
        .flatten()
        .find(|a| !matches!(a.as_str(), "amd64" | "arm64"))
    {
        return Err(invalid(format!(
            "meta.arch {arch:?} must be amd64 or arm64"
        )));
    }

    let d = dec;
    if d.endpoint.is_none()
        && d.model.is_none()
        && d.tool.is_none()
        && d.agent_strategy.is_none()
        && d.datasource.is_none()
        && d.trigger.is_none()
    {
        return Err(invalid(
            "at least one of endpoint, model, tool, agent_strategy, trigger, or datasource must be provided",
        ));
    }
    let others = |skip: &str| -> bool {
        [
            ("tool", d.tool.is_some()),
            ("model", d.model.is_some()),
            ("endpoint", d.endpoint.is_some()),
            ("agent_strategy", d.agent_strategy.is_some()),
            ("datasource", d.datasource.is_some()),
            ("trigger", d.trigger.is_some()),
        ]
        .iter()
        .any(|(k, present)| *k != skip && *present)
    };
    // Only tools and endpoints may be combined.
    for kind in ["model", "agent_strategy", "datasource", "trigger"] {
        let present = match kind {
            "model" => d.model.is_some(),
            "agent_strategy" => d.agent_strategy.is_some(),
            "datasource" => d.datasource.is_some(),
            _ => d.trigger.is_some(),
        };
        if present && others(kind) {
            return Err(invalid(format!(
                "{kind} cannot be provided together with another provider kind"
            )));
        }
    }
    // The reference's `parameter_rule` check: a rule without a template
    // names its own type. Dify's `ParameterRule.type` is required, so one
    // such rule would make Dify reject every listing that carries it.
    for model in d.model.iter().flat_map(|m| &m.models) {
        if let Some(rule) = model
            .parameter_rules
            .iter()
            .find(|r| r.use_template.is_none() && r.parameter_type.is_none())
        {
            return Err(invalid(format!(
                "model {:?}: parameter rule {:?} needs a type or a use_template",
                model.model, rule.name
            )));
        }
    }
    Ok(())
}

/// Checks that every icon the declaration names is a file under `_assets/`.
pub fn check_assets(
    dec: &PluginDeclaration,
    files: &(impl PackageFiles + ?Sized),
) -> Result<(), PackageError> {
    let has = |icon: &str| files.file(&format!("_assets/{icon}")).is_some();
    let require = |what: &str, icon: &str| -> Result<(), PackageError> {
        if icon.is_empty() || has(icon) {
            Ok(())
        } else {
            Err(PackageError::MissingAsset(format!("{what} {icon:?}")))
        }
    };
    if let Some(model) = &dec.model {
        for (what, icons) in [
            ("model icon small", &model.icon_small),
            ("model icon large", &model.icon_large),
        ] {
            for (lang, icon) in icons.iter().flat_map(|i| i.values()) {
                require(&format!("{what} {lang}"), icon)?;
            }
        }
    }
    if let Some(tool) = &dec.tool {
        require("tool icon", &tool.identity.icon)?;
    }
    if let Some(trigger) = &dec.trigger {
        require("trigger icon", &trigger.identity.icon)?;
    }
    if let Some(datasource) = &dec.datasource {
        require("datasource icon", &datasource.identity.icon)?;
    }
    require("plugin icon", &dec.icon)?;
    require("plugin dark icon", &dec.icon_dark)?;
    Ok(())
}

/// `README.md` as `en_US` and `readme/README_<lang>.md` by language.
pub fn readmes(files: &(impl PackageFiles + ?Sized)) -> Readmes {
    let mut out = Readmes::new();
    for name in files.names() {
        let language = if name == "README.md" {
            "en_US".to_string()
        } else if let Some(lang) = name
            .strip_prefix("readme/README_")
            .and_then(|rest| rest.strip_suffix(".md"))
            .filter(|lang| is_readme_language(lang))
        {
            lang.to_string()
        } else {
            continue;
        };
        if let Some(content) = files.file(name) {
            out.insert(language, String::from_utf8_lossy(content).into_owned());
        }
    }
    out
}

/// `[a-z]{2}_[A-Za-z]{2,}`.
fn is_readme_language(lang: &str) -> bool {
    let b = lang.as_bytes();
    b.len() >= 5
        && b[..2].iter().all(u8::is_ascii_lowercase)
        && b[2] == b'_'
        && b[3..].iter().all(u8::is_ascii_alphabetic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(n, c)| (n.to_string(), c.as_bytes().to_vec()))
            .collect()
    }

    const MANIFEST: &str = r#"
version: 0.0.1
type: plugin
author: acme
name: demo
label: {en_US: Demo}
description: {en_US: A demo}
icon: icon.svg
created_at: 2024-07-12T08:03:44.658609186Z
resource: {memory: 268435456}
plugins:
  models: [provider/m.yaml]
meta:
  version: 0.0.1
  arch: [amd64, arm64]
  runner: {language: python, version: "3.12", entrypoint: main}
"#;

    #[test]
    fn model_files_follow_patterns_positions_and_templates() {
        let pkg = files(&[
            ("manifest.yaml", MANIFEST),
            ("_assets/icon.svg", "<svg/>"),
            (
                "provider/m.yaml",
                "provider: m\nlabel: {en_US: M}\nsupported_model_types: [llm]\nconfigurate_methods: [predefined-model]\nmodels:\n  llm:\n    predefined: [\"models/llm/*.yaml\"]\n    position: models/llm/_position.yaml\n",
            ),
            ("models/llm/_position.yaml", "- b\n- a\n"),
            (
                "models/llm/a.yaml",
                "model: a\nmodel_type: llm\nparameter_rules:\n  - name: temperature\n    use_template: temperature\n    max: 2\n",
            ),
            ("models/llm/nested/c.yaml", "model: c\nmodel_type: llm\n"),
            ("models/llm/b.yaml", "model: b\nlabel: {en_US: Bee}\nmodel_type: llm\n"),
        ]);
        let dec = resolve(pkg.as_slice()).unwrap();
        let model = dec.model.as_ref().unwrap();
        let names: Vec<_> = model.models.iter().map(|m| m.model.as_str()).collect();
        assert_eq!(names, ["a", "b"], "zip order, `*` does not cross `/`");
        assert_eq!(
            model.position.as_ref().unwrap().llm.as_deref(),
            Some(&["b".to_string(), "a".to_string()][..])
        );
        let a = &model.models[0];
        assert_eq!(a.label.en_us, "a");
        assert_eq!(a.fetch_from, "predefined-model");
        let rule = &a.parameter_rules[0];
        assert_eq!(rule.label.as_ref().unwrap().en_us, "temperature");
        assert_eq!(rule.parameter_type.as_deref(), Some("float"));
        assert_eq!(rule.max, Some(2.0));
        assert_eq!(rule.min, Some(0.0));
        assert!(rule
            .help
            .as_ref()
            .unwrap()
            .en_us
            .starts_with("Controls randomness"));
        assert_eq!(model.description.as_ref().unwrap().en_us, "A demo");
        validate(&dec).unwrap();
        check_assets(&dec, pkg.as_slice()).unwrap();
    }

    #[test]
    fn a_parameter_rule_needs_a_type_or_a_template() {
        let pkg = |rule: &str| {
            files(&[
                ("manifest.yaml", MANIFEST),
                (
                    "provider/m.yaml",
                    &format!("provider: m\nlabel: {{en_US: M}}\nmodels:\n  - model: x\n    model_type: llm\n    parameter_rules: [{rule}]\n"),
                ),
            ])
        };
        let dec = resolve(pkg("{name: t, use_template: temperature}").as_slice()).unwrap();
        validate(&dec).unwrap();
        let dec = resolve(pkg("{name: n, type: int}").as_slice()).unwrap();
        validate(&dec).unwrap();
        let dec = resolve(pkg("{name: n}").as_slice()).unwrap();
        let err = validate(&dec).unwrap_err().to_string();
        assert!(err.contains("parameter rule \"n\""), "{err}");
    }

    #[test]
    fn unknown_template_is_an_error_naming_the_file() {
        let pkg = files(&[
            ("manifest.yaml", MANIFEST),
            (
                "provider/m.yaml",
                "provider: m\nlabel: {en_US: M}\nmodels:\n  - model: x\n    model_type: llm\n    parameter_rules: [{name: t, use_template: nope}]\n",
            ),
        ]);
        let err = resolve(pkg.as_slice()).unwrap_err();
        assert!(err.to_string().contains("provider/m.yaml"), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn readme_languages_come_from_file_names() {
        let pkg = files(&[
            ("README.md", "# en"),
            ("readme/README_zh_Hans.md", "# zh"),
            ("readme/README_x.md", "bad"),
            ("readme/sub/README_ja_JP.md", "nested"),
        ]);
        let r = readmes(pkg.as_slice());
        assert_eq!(r.len(), 2);
        assert_eq!(r["en_US"], "# en");
        assert_eq!(r["zh_Hans"], "# zh");
    }

    #[test]
    fn manifest_versions() {
        for ok in ["0.0.1", "1.2.3-beta_2", "9999.9999.9999"] {
            assert!(is_manifest_version(ok), "{ok}");
        }
        for bad in ["1.2", "1.2.3.4", "1.2.x", "1.2.3-", "12345.0.0", ""] {
            assert!(!is_manifest_version(bad), "{bad}");
        }
    }
}
