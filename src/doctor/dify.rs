//! The Dify inner API check: DIFY_INNER_API_URL answers, and accepts
//! DIFY_INNER_API_KEY.
//!
//! Dify has no inner route that only checks the key. Its plugin routes
//! (`api/controllers/inner_api/plugin/plugin.py`) run, in order: the tenant
//! lookup (`get_user_tenant`: 400 `invalid_param` "tenant_id is required" /
//! "tenant not found"), the key check (`plugin_inner_api_only`: a wrong key
//! answers 404, not 401, so the route looks absent), then the payload
//! check (`plugin_data`: 400 "invalid payload: …"). So `invoke/encrypt`
//! with a real tenant and no payload reaches the key check and stops at the
//! payload check without doing anything; Dify only makes sure the tenant's
//! anonymous end user exists, as every backwards call does.

use std::time::Duration;

use serde_json::{json, Value};

use super::Check;
use crate::settings::Settings;

const NAME: &str = "dify inner api";
/// A cheap route behind the plugin key check.
pub const PROBE_PATH: &str = "inner/api/invoke/encrypt";

pub async fn check(settings: &Settings, tenant_id: Option<&str>, timeout: Duration) -> Check {
    let base = settings.dify_inner_api_url.trim_end_matches('/');
    let url = format!("{base}/{PROBE_PATH}");
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(
            settings.dify_backwards_invocation_write_timeout,
        ))
        .timeout(timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => return Check::fail(NAME, format!("cannot build an HTTP client: {e}")),
    };
    let sent = client
        .post(&url)
        .header("X-Inner-Api-Key", settings.dify_inner_api_key.expose())
        .json(&json!({"tenant_id": tenant_id.unwrap_or(""), "user_id": ""}))
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            return Check::fail(
                NAME,
                format!(
                    "cannot reach {base} ({}); check DIFY_INNER_API_URL (in Dify's docker-compose: http://api:5001) and that Dify's API is up",
                    error_chain(&e.without_url())
                ),
            )
        }
    };
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    judge(base, tenant_id, status, &message, &body)
}

fn judge(base: &str, tenant_id: Option<&str>, status: u16, message: &str, body: &str) -> Check {
    match (status, tenant_id) {
        (400, Some(t)) if message.starts_with("invalid payload") => {
            Check::ok(NAME, format!("{base} accepted the key (tenant {t})"))
        }
        (400, Some(t)) if message.contains("tenant not found") => Check::warn(
            NAME,
            format!(
                "{base} answers but does not know tenant {t}, so the key was not checked; is DIFY_INNER_API_URL the Dify this daemon serves? (pass --tenant-id with a workspace id of it)"
            ),
        ),
        (400, None) => Check::warn(
            NAME,
            format!(
                "{base} answers, but Dify checks the key only for a known tenant and none is recorded yet; run again with --tenant-id <a Dify workspace id>, or after the first plugin install"
            ),
        ),
        (404, _) => Check::fail(
            NAME,
            format!(
                "{base} answered 404 to /{PROBE_PATH}: Dify refuses DIFY_INNER_API_KEY (it must equal Dify's PLUGIN_DIFY_INNER_API_KEY), or DIFY_INNER_API_URL is not Dify's API server"
            ),
        ),
        (401 | 403, _) => Check::fail(
            NAME,
            format!("{base} refused the request ({status}); check DIFY_INNER_API_KEY against Dify's PLUGIN_DIFY_INNER_API_KEY"),
        ),
        (500..=599, _) => Check::fail(
            NAME,
            format!("{base} failed ({status}: {}); see Dify's API logs", short(body)),
        ),
        _ => Check::fail(
            NAME,
            format!(
                "{base} answered {status} ({}), not what Dify's inner API answers; check DIFY_INNER_API_URL",
                short(body)
            ),
        ),
    }
}

fn short(body: &str) -> String {
    let line = body.lines().next().unwrap_or("").trim();
    let mut end = line.len().min(160);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_owned()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn dify_answers_are_read_in_its_order_of_checks() {
        let ok = judge(
            "http://api:5001",
            Some("t"),
            400,
            "invalid payload: 3 validation errors",
            "",
        );
        assert_eq!(ok.status, Status::Ok);
        let wrong_key = judge("http://api:5001", Some("t"), 404, "", "{}");
        assert_eq!(wrong_key.status, Status::Fail);
        assert!(wrong_key.message.contains("DIFY_INNER_API_KEY"));
        let no_tenant = judge("http://api:5001", None, 400, "tenant_id is required", "");
        assert_eq!(no_tenant.status, Status::Warn);
        let crash = judge(
            "http://api:5001",
            Some("t"),
            500,
            "",
            "Internal Server Error",
        );
        assert_eq!(crash.status, Status::Fail);
        assert!(crash.message.contains("Internal Server Error"));
    }
}
