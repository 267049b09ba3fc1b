//! Tool declarations and app input forms → MCP tools.
//!
//! A plugin tool's LLM-form parameters become its `inputSchema` (types,
//! enums from options, required, defaults, bounds); form-only parameters
//! take the server's fixed values (or their declared default) and are not
//! shown. A Dify app's `user_input_form` becomes the schema of its tool;
//! chat apps also take a `query`.

use std::sync::Arc;

use rmcp::model::{JsonObject, Tool};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::records::AppRef;

/// The longest tool name most MCP clients accept.
const MAX_NAME: usize = 64;

/// What an MCP tool runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A plugin tool.
    Plugin {
        plugin_id: String,
        provider: String,
        tool: String,
    },
    /// A Dify app.
    App(AppRef),
}

/// One MCP tool of a server and how to run it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub tool: Tool,
    pub target: Target,
    /// Parameter values the caller does not give: form-only parameters'
    /// fixed values or defaults.
    pub fixed: Map<String, Value>,
    /// Whether the tool declared an output schema (structured output must
    /// then be an object matching it).
    pub has_output_schema: bool,
}

/// Keeps `[A-Za-z0-9_-]`, replacing anything else with `_`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A name within the length limit: too-long names are cut and suffixed
/// with a hash of the full key, so they stay unique and stable.
fn bounded(name: String, key: &str) -> String {
    if name.len() <= MAX_NAME {
        return name;
    }
    let hash = hex::encode(&Sha256::digest(key.as_bytes())[..4]);
    format!("{}_{hash}", &name[..MAX_NAME - 9])
}

/// The MCP name of a plugin tool: `provider__tool`. It depends only on the
/// tool itself, so it does not change when other tools come and go.
pub fn plugin_tool_name(provider: &str, tool: &str) -> String {
    bounded(
        format!("{}__{}", sanitize(provider), sanitize(tool)),
        &format!("{provider}/{tool}"),
    )
}

/// Whether `name` is a tool name the MCP specification allows (2025-11-25,
/// `server/tools#tool-names`): 1 to 128 of `A-Z a-z 0-9 _ - .`.
pub fn valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The MCP name of an app tool: its configured name, else its id.
pub fn app_tool_name(app: &AppRef) -> String {
    let base = app.name.as_deref().unwrap_or(&app.app_id);
    bounded(sanitize(base), &app.app_id)
}

fn i18n(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m
            .get("en_US")
            .or_else(|| m.values().next())
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

/// The JSON Schema of one tool parameter; `None` for kinds MCP callers
/// cannot fill in (files, model and app selectors).
fn parameter_schema(p: &Value) -> Option<Value> {
    let kind = p.get("type").and_then(Value::as_str).unwrap_or("string");
    let mut schema = match kind {
        "string" | "secret-input" | "text-input" | "paragraph" => json!({"type": "string"}),
        "number" => json!({"type": "number"}),
        "boolean" | "checkbox" => json!({"type": "boolean"}),
        "select" | "dynamic-select" => json!({"type": "string"}),
        "array" => json!({"type": "array"}),
        "object" => json!({"type": "object"}),
        "any" => json!({}),
        _ => return None,
    };
    let obj = schema.as_object_mut().expect("schemas are objects");
    if let Some(Value::Array(options)) = p.get("options") {
        let values: Vec<Value> = options
            .iter()
            .filter_map(|o| match o {
                Value::Object(m) => m.get("value").cloned(),
                Value::String(_) => Some(o.clone()),
                _ => None,
            })
            .collect();
        if !values.is_empty() {
            obj.insert("enum".into(), Value::Array(values));
        }
    }
    let description = non_empty(
        p.get("llm_description")
            .and_then(Value::as_str)
            .map(str::to_owned),
    )
    .or_else(|| non_empty(i18n(p.get("human_description"))))
    .or_else(|| non_empty(i18n(p.get("label"))));
    if let Some(d) = description {
        obj.insert("description".into(), Value::String(d));
    }
    if let Some(default) = p.get("default").filter(|d| !d.is_null()) {
        obj.insert("default".into(), coerce(kind, default));
    }
    if kind == "number" {
        for (from, to) in [("min", "minimum"), ("max", "maximum")] {
            if let Some(n) = p.get(from).and_then(as_number) {
                obj.insert(to.into(), n);
            }
        }
    }
    Some(schema)
}

fn as_number(v: &Value) -> Option<Value> {
    match v {
        Value::Number(_) => Some(v.clone()),
        Value::String(s) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
        _ => None,
    }
}

/// Declarations written in YAML sometimes carry numbers and booleans as
/// strings; the schema's `default` should have the parameter's own type.
fn coerce(kind: &str, v: &Value) -> Value {
    match (kind, v) {
        ("number", Value::String(_)) => as_number(v).unwrap_or_else(|| v.clone()),
        ("boolean" | "checkbox", Value::String(s)) => match s.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => v.clone(),
        },
        _ => v.clone(),
    }
}

fn object_schema(properties: Map<String, Value>, required: Vec<Value>) -> JsonObject {
    let mut schema = Map::new();
    schema.insert("type".into(), json!("object"));
    schema.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        schema.insert("required".into(), Value::Array(required));
    }
    schema
}

/// The MCP tool of one declared plugin tool. `fixed` holds the server's
/// values for this tool's parameters; those parameters are not shown.
pub fn plugin_tool(
    plugin_id: &str,
    provider: &str,
    decl: &Value,
    fixed: Option<&Map<String, Value>>,
) -> Option<Entry> {
    let name = decl.pointer("/identity/name")?.as_str()?.to_owned();
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut values = Map::new();
    for p in decl
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(pname) = p.get("name").and_then(Value::as_str) else {
            continue;
        };
        let form = p.get("form").and_then(Value::as_str).unwrap_or("llm");
        if let Some(v) = fixed.and_then(|f| f.get(pname)) {
            values.insert(pname.to_owned(), v.clone());
            continue;
        }
        if form != "llm" {
            if let Some(d) = p.get("default").filter(|d| !d.is_null()) {
                let kind = p.get("type").and_then(Value::as_str).unwrap_or("string");
                values.insert(pname.to_owned(), coerce(kind, d));
            }
            continue;
        }
        let Some(schema) = parameter_schema(p) else {
            continue;
        };
        if p.get("required").and_then(Value::as_bool).unwrap_or(false) {
            required.push(Value::String(pname.to_owned()));
        }
        properties.insert(pname.to_owned(), schema);
    }
    let description = non_empty(
        decl.pointer("/description/llm")
            .and_then(Value::as_str)
            .map(str::to_owned),
    )
    .or_else(|| non_empty(i18n(decl.pointer("/description/human"))))
    .unwrap_or_default();
    let mut tool = Tool::new(
        plugin_tool_name(provider, &name),
        description,
        Arc::new(object_schema(properties, required)),
    );
    if let Some(title) = non_empty(i18n(decl.pointer("/identity/label"))) {
        tool = tool.with_title(title);
    }
    let output = decl
        .get("output_schema")
        .and_then(Value::as_object)
        .filter(|o| o.get("type").and_then(Value::as_str) == Some("object"));
    let has_output_schema = output.is_some();
    if let Some(o) = output {
        tool = tool.with_raw_output_schema(Arc::new(o.clone()));
    }
    Some(Entry {
        tool,
        target: Target::Plugin {
            plugin_id: plugin_id.to_owned(),
            provider: provider.to_owned(),
            tool: name,
        },
        fixed: values,
        has_output_schema,
    })
}

/// The MCP tool of a Dify app, from its parameters (`fetch/app/info`).
pub fn app_tool(app: &AppRef, info: &Value) -> Entry {
    let mut properties = Map::new();
    let mut required = Vec::new();
    let form = info
        .get("user_input_form")
        .or_else(|| info.pointer("/data/user_input_form"))
        .and_then(Value::as_array);
    for item in form.into_iter().flatten() {
        let Some((kind, field)) = item.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let Some(variable) = field.get("variable").and_then(Value::as_str) else {
            continue;
        };
        let mut schema = match kind.as_str() {
            "text-input" | "paragraph" => json!({"type": "string"}),
            "select" => json!({"type": "string"}),
            "number" => json!({"type": "number"}),
            "checkbox" => json!({"type": "boolean"}),
            "json_object" => json!({"type": "object"}),
            _ => continue,
        };
        let obj = schema.as_object_mut().expect("schemas are objects");
        if let Some(Value::Array(options)) = field.get("options") {
            if !options.is_empty() {
                obj.insert("enum".into(), Value::Array(options.clone()));
            }
        }
        if let Some(n) = field.get("max_length").and_then(Value::as_u64) {
            if n > 0 {
                obj.insert("maxLength".into(), json!(n));
            }
        }
        if let Some(label) = non_empty(i18n(field.get("label"))) {
            obj.insert("description".into(), Value::String(label));
        }
        match field.get("default") {
            Some(Value::String(s)) if s.is_empty() => {}
            Some(Value::Null) | None => {}
            Some(d) => {
                obj.insert("default".into(), d.clone());
            }
        }
        if field
            .get("required")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            required.push(Value::String(variable.to_owned()));
        }
        properties.insert(variable.to_owned(), schema);
    }
    if app.is_chat() {
        properties.insert(
            "query".into(),
            json!({"type": "string", "description": "The message to send to the app"}),
        );
        required.push(json!("query"));
    }
    let description = app
        .description
        .clone()
        .unwrap_or_else(|| format!("Runs the Dify app {}", app.app_id));
    let mut tool = Tool::new(
        app_tool_name(app),
        description,
        Arc::new(object_schema(properties, required)),
    );
    if !app.is_chat() {
        tool = tool.with_raw_output_schema(Arc::new(
            json!({"type": "object", "additionalProperties": true})
                .as_object()
                .cloned()
                .expect("object"),
        ));
    }
    Entry {
        has_output_schema: !app.is_chat(),
        tool,
        target: Target::App(app.clone()),
        fixed: Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl() -> Value {
        json!({
            "identity": {"name": "search", "label": {"en_US": "Search"}},
            "description": {"human": {"en_US": "Human text"}, "llm": "Searches the web."},
            "parameters": [
                {"name": "q", "type": "string", "required": true, "form": "llm",
                 "llm_description": "What to look for"},
                {"name": "limit", "type": "number", "required": false, "form": "llm",
                 "default": "5", "min": 1, "max": "50", "human_description": {"en_US": "How many"}},
                {"name": "engine", "type": "select", "form": "llm", "required": false,
                 "options": [{"value": "web", "label": {"en_US": "Web"}}, {"value": "news", "label": {"en_US": "News"}}]},
                {"name": "safe", "type": "boolean", "form": "form", "default": "true"},
                {"name": "region", "type": "string", "form": "form"},
                {"name": "doc", "type": "file", "form": "llm"}
            ],
            "output_schema": {"type": "object", "properties": {"hits": {"type": "array"}}}
        })
    }

    #[test]
    fn llm_parameters_become_the_input_schema() {
        let e = plugin_tool("a/b", "web", &decl(), None).unwrap();
        assert_eq!(e.tool.name, "web__search");
        assert_eq!(e.tool.title.as_deref(), Some("Search"));
        assert_eq!(e.tool.description.as_deref(), Some("Searches the web."));
        let schema = Value::Object((*e.tool.input_schema).clone());
        assert_eq!(
            schema["properties"]["q"],
            json!({"type": "string", "description": "What to look for"})
        );
        assert_eq!(schema["properties"]["limit"]["description"], "How many");
        assert_eq!(schema["properties"]["limit"]["minimum"], json!(1));
        assert_eq!(
            schema["properties"]["engine"]["enum"],
            json!(["web", "news"])
        );
        assert_eq!(schema["properties"]["limit"]["maximum"], json!(50.0));
        assert_eq!(schema["properties"]["limit"]["default"], json!(5.0));
        assert_eq!(schema["required"], json!(["q"]));
        assert!(
            schema["properties"].get("safe").is_none(),
            "form params are hidden"
        );
        assert!(
            schema["properties"].get("doc").is_none(),
            "files are not offered"
        );
        assert_eq!(e.fixed, json!({"safe": true}).as_object().cloned().unwrap());
        assert!(e.has_output_schema);
        assert_eq!(
            e.tool.output_schema.as_ref().unwrap()["properties"]["hits"]["type"],
            "array"
        );
    }

    #[test]
    fn fixed_values_hide_parameters_of_any_form() {
        let fixed = json!({"region": "eu", "q": "pinned"});
        let e = plugin_tool("a/b", "web", &decl(), fixed.as_object()).unwrap();
        let schema = Value::Object((*e.tool.input_schema).clone());
        assert!(schema["properties"].get("q").is_none());
        assert!(schema.get("required").is_none());
        assert_eq!(e.fixed["region"], "eu");
        assert_eq!(e.fixed["q"], "pinned");
    }

    #[test]
    fn names_are_sanitized_bounded_and_stable() {
        assert_eq!(
            plugin_tool_name("my.provider", "do it"),
            "my_provider__do_it"
        );
        let long = "x".repeat(80);
        let a = plugin_tool_name(&long, "t");
        assert_eq!(a.len(), MAX_NAME);
        assert_eq!(a, plugin_tool_name(&long, "t"));
        assert_ne!(a, plugin_tool_name(&long, "u"));
    }

    #[test]
    fn app_forms_become_schemas_and_chat_apps_take_a_query() {
        let info = json!({"user_input_form": [
            {"text-input": {"label": "Name", "variable": "name", "required": true, "max_length": 48, "default": ""}},
            {"select": {"label": "Tone", "variable": "tone", "required": false, "options": ["calm", "lively"], "default": "calm"}},
            {"file": {"label": "Doc", "variable": "doc", "required": false}}
        ]});
        let wf = AppRef {
            app_id: "wf".into(),
            name: Some("greet".into()),
            description: None,
            mode: None,
        };
        let e = app_tool(&wf, &info);
        let schema = Value::Object((*e.tool.input_schema).clone());
        assert_eq!(e.tool.name, "greet");
        assert_eq!(schema["properties"]["name"]["maxLength"], 48);
        assert_eq!(
            schema["properties"]["tone"]["enum"],
            json!(["calm", "lively"])
        );
        assert_eq!(schema["properties"]["tone"]["default"], "calm");
        assert!(schema["properties"].get("doc").is_none());
        assert_eq!(schema["required"], json!(["name"]));
        assert!(e.tool.output_schema.is_some());
        let chat = AppRef {
            mode: Some("advanced-chat".into()),
            ..wf
        };
        let e = app_tool(&chat, &info);
        let schema = Value::Object((*e.tool.input_schema).clone());
        assert_eq!(schema["required"], json!(["name", "query"]));
        assert!(e.tool.output_schema.is_none());
    }
}
