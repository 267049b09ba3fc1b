//! Endpoint settings against the endpoint group's declared settings
//! (`ProviderConfig` fields `{name, type, required, options, scope, …}`):
//! validation before saving and masking of secrets before listing
//! (reference: `plugin_entities/config.go::ValidateProviderConfigs`,
//! `utils/encryption/mask.go`).

use serde_json::{Map, Value};

/// The declared type of secrets.
pub const SECRET_INPUT: &str = "secret-input";

/// At most this many settings are accepted, as in the reference.
const MAX_FIELDS: usize = 64;

fn name(config: &Value) -> Option<&str> {
    config.get("name").and_then(Value::as_str)
}

fn kind(config: &Value) -> &str {
    config.get("type").and_then(Value::as_str).unwrap_or("")
}

/// Whether the field `field` is declared as a secret.
pub fn is_secret(configs: &[Value], field: &str) -> bool {
    configs
        .iter()
        .any(|c| name(c) == Some(field) && kind(c) == SECRET_INPUT)
}

/// Checks `settings` against the declared fields. The message is the
/// reference's wording.
pub fn validate(settings: &Map<String, Value>, configs: &[Value]) -> Result<(), String> {
    if settings.len() > MAX_FIELDS {
        return Err("too many setting fields".into());
    }
    for config in configs {
        let Some(field) = name(config) else { continue };
        let required = config
            .get("required")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let value = match settings.get(field) {
            None | Some(Value::Null) if required => {
                return Err(format!("missing required setting: {field}"))
            }
            None | Some(Value::Null) => continue,
            Some(v) => v,
        };
        let not = |what: &str| Err(format!("setting {field} is not {what}"));
        match kind(config) {
            "text-input" | SECRET_INPUT if !value.is_string() => return not("a string"),
            "select" => {
                if !value.is_string() {
                    return not("a string");
                }
                let options = config.get("options").and_then(Value::as_array);
                let found =
                    options.is_some_and(|opts| opts.iter().any(|o| o.get("value") == Some(value)));
                if !found {
                    return not("a valid option");
                }
            }
            "boolean" if !value.is_boolean() => return not("a boolean"),
            "app-selector" => {
                let m = value
                    .as_object()
                    .ok_or(format!("setting {field} is not a map"))?;
                if !m.contains_key("app_id") {
                    return Err(format!("setting {field} is missing app_id"));
                }
            }
            "model-selector" => {
                let m = value
                    .as_object()
                    .ok_or(format!("setting {field} is not a map"))?;
                for key in ["provider", "model", "model_type"] {
                    if !m.contains_key(key) {
                        return Err(format!("setting {field} is missing {key}"));
                    }
                }
                let scope = config.get("scope").and_then(Value::as_str);
                let needs: &[&str] = match scope {
                    None
                    | Some("all" | "llm" | "text-embedding" | "speech2text")
                    | Some("moderation") => &[],
                    Some("rerank") => &["score_threshold", "top_n"],
                    Some("tts") => &["voice"],
                    Some("vision") => &["completion_params"],
                    Some(_) => return not("a valid model config scope"),
                };
                for key in needs {
                    if !m.contains_key(*key) {
                        return Err(format!("setting {field} is missing {key}"));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A secret as listings show it: the first and last two characters around
/// stars when it is longer than six, otherwise only stars.
pub fn mask_secret(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() > 6 {
        let head: String = chars[..2].iter().collect();
        let tail: String = chars[chars.len() - 2..].iter().collect();
        format!("{head}{}{tail}", "*".repeat(chars.len() - 4))
    } else {
        "*".repeat(chars.len())
    }
}

/// `settings` with every string secret masked.
pub fn mask(settings: &Map<String, Value>, configs: &[Value]) -> Map<String, Value> {
    settings
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) if is_secret(configs, k) => (k.clone(), Value::String(mask_secret(s))),
            other => (k.clone(), other.clone()),
        })
        .collect()
}

/// For an update: a secret sent back exactly as the listing masked it means
/// "unchanged", so the stored value is put back in its place.
pub fn restore_masked(
    settings: &mut Map<String, Value>,
    original: &Map<String, Value>,
    configs: &[Value],
) {
    let masked = mask(original, configs);
    for (k, v) in settings.iter_mut() {
        if is_secret(configs, k) && masked.get(k) == Some(v) {
            if let Some(orig) = original.get(k) {
                *v = orig.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn configs() -> Vec<Value> {
        json!([
            {"name":"greeting","type":"text-input","required":false},
            {"name":"token","type":"secret-input","required":true},
            {"name":"mode","type":"select","options":[{"value":"a"},{"value":"b"}]},
            {"name":"flag","type":"boolean"},
            {"name":"app","type":"app-selector"},
            {"name":"model","type":"model-selector","scope":"rerank"}
        ])
        .as_array()
        .unwrap()
        .clone()
    }

    #[test]
    fn valid_settings_pass() {
        let s = obj(json!({"token":"t","greeting":"hi","mode":"a","flag":true,
            "app":{"app_id":"x"},"model":{"provider":"p","model":"m","model_type":"rerank","score_threshold":0.5,"top_n":3},
            "undeclared": 5}));
        validate(&s, &configs()).unwrap();
    }

    #[test]
    fn each_rule_refuses_with_the_reference_text() {
        let c = configs();
        let err = |v: Value| validate(&obj(v), &c).unwrap_err();
        assert_eq!(err(json!({})), "missing required setting: token");
        assert_eq!(
            err(json!({"token":null})),
            "missing required setting: token"
        );
        assert_eq!(err(json!({"token":1})), "setting token is not a string");
        assert_eq!(
            err(json!({"token":"t","mode":"z"})),
            "setting mode is not a valid option"
        );
        assert_eq!(
            err(json!({"token":"t","flag":"yes"})),
            "setting flag is not a boolean"
        );
        assert_eq!(
            err(json!({"token":"t","app":{}})),
            "setting app is missing app_id"
        );
        assert_eq!(
            err(json!({"token":"t","model":{"provider":"p","model":"m","model_type":"rerank"}})),
            "setting model is missing score_threshold"
        );
        let many: Map<String, Value> = (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert_eq!(validate(&many, &[]).unwrap_err(), "too many setting fields");
    }

    #[test]
    fn secrets_are_masked_like_the_reference() {
        assert_eq!(mask_secret("abcdefgh"), "ab****gh");
        assert_eq!(mask_secret("abcdef"), "******");
        assert_eq!(mask_secret(""), "");
        let m = mask(
            &obj(json!({"token":"supersecret","greeting":"hi"})),
            &configs(),
        );
        assert_eq!(m["token"], "su*******et");
        assert_eq!(m["greeting"], "hi");
    }

    #[test]
    fn masked_secret_in_an_update_keeps_the_stored_one() {
        let original = obj(json!({"token":"supersecret","greeting":"hi"}));
        let mut update = obj(json!({"token":"su*******et","greeting":"su*******et"}));
        restore_masked(&mut update, &original, &configs());
        assert_eq!(update["token"], "supersecret");
        // Only secrets are restored.
        assert_eq!(update["greeting"], "su*******et");
        let mut changed = obj(json!({"token":"newsecret"}));
        restore_masked(&mut changed, &original, &configs());
        assert_eq!(changed["token"], "newsecret");
    }
}
