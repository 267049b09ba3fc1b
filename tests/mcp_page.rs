//! The page a browser gets at an MCP server's URL, loaded in headless
//! Chromium (tests/browser/chromium.sh installs it when missing): the
//! server's name, its tools and client configurations, without a token.

mod common;
mod dispatch_common;

use std::path::Path;
use std::sync::Arc;

use common::{KEY, TENANT};
use plugind::app_state::AppState;
use plugind::install::NoopInstallStep;
use serde_json::{json, Value};

struct Served {
    base: String,
    url: String,
    _dir: tempfile::TempDir,
}

/// A daemon with the echo_tool declarations (the page runs no tool) and a
/// server exposing three of its tools.
async fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let database_url = common::fresh_database_url(dir.path()).await;
    let settings = common::settings(dir.path(), &database_url, &[]);
    let state = AppState::build_with_step(settings, Arc::new(NoopInstallStep))
        .await
        .unwrap();
    let base = common::serve_router(plugind::api::app(state.clone())).await;
    let app = common::TestApp {
        base: base.clone(),
        client: reqwest::Client::new(),
        state,
        dir,
        database_url,
    };
    let (_, task) = app
        .install(dispatch_common::fixture_package("echo_tool"))
        .await;
    assert_eq!(task["status"], "success", "{task}");
    let created: Value = app
        .client
        .post(format!("{base}/plugin/{TENANT}/mcp/servers"))
        .header("X-Api-Key", KEY)
        .json(&json!({
            "name": "Echo <Tools> & Co",
            "description": "Tools that echo what you send",
            "tools": [
                {"provider": "echo_tool", "tool": "echo"},
                {"provider": "echo_tool", "tool": "json"},
                {"provider": "echo_tool", "tool": "slow", "name": "take_your_time"}
            ],
            "credentials": {"echo_tool": {"api_key": "never-shown"}}
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["code"], 0, "{created}");
    let url = format!("{base}{}", created["data"]["path"].as_str().unwrap());
    assert_eq!(
        url,
        format!("{base}/mcp/{}/mcp", created["data"]["id"].as_str().unwrap())
    );
    Served {
        base,
        url,
        _dir: app.dir,
    }
}

/// The DOM Chromium builds for `url` (scripts run).
async fn dump_dom(url: &str) -> String {
    let chromium = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/chromium.sh"))
        .output()
        .unwrap();
    assert!(
        chromium.status.success(),
        "chromium.sh: {}",
        String::from_utf8_lossy(&chromium.stderr)
    );
    let chromium = String::from_utf8(chromium.stdout)
        .unwrap()
        .trim()
        .to_owned();
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The text inside the element with `id` (its first text up to a tag).
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let start = at + dom[at..].find('>').unwrap() + 1;
    let end = start + dom[start..].find('<').unwrap();
    &dom[start..end]
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[tokio::test]
async fn a_browser_sees_the_name_tools_and_client_configurations() {
    let s = serve().await;
    let dom = dump_dom(&s.url).await;
    assert_eq!(unescape(text_of(&dom, "server-name")), "Echo <Tools> & Co");
    assert_eq!(text_of(&dom, "server-url"), s.url);
    assert!(dom.contains("Tools that echo what you send"));
    // The tools, in order, under their MCP names.
    let tools_at = dom.find("id=\"tools\"").unwrap();
    let tools_end = tools_at + dom[tools_at..].find("</ul>").unwrap();
    let names: Vec<&str> = dom[tools_at..tools_end]
        .split("class=\"tool-name\">")
        .skip(1)
        .map(|s| &s[..s.find('<').unwrap()])
        .collect();
    assert_eq!(
        names,
        ["echo_tool__echo", "echo_tool__json", "take_your_time"]
    );
    assert!(dom[tools_at..tools_end].contains("Parameters: text"));
    // Each client's configuration parses and points at this server.
    let cursor: Value = serde_json::from_str(&unescape(text_of(&dom, "cursor-config"))).unwrap();
    assert_eq!(cursor["mcpServers"]["echo-tools-co"]["url"], s.url);
    assert_eq!(
        cursor["mcpServers"]["echo-tools-co"]["headers"]["Authorization"],
        "Bearer <YOUR_TOKEN>"
    );
    let vscode: Value = serde_json::from_str(&unescape(text_of(&dom, "vscode-config"))).unwrap();
    assert_eq!(vscode["servers"]["echo-tools-co"]["type"], "http");
    assert_eq!(vscode["servers"]["echo-tools-co"]["url"], s.url);
    let claude: Value =
        serde_json::from_str(&unescape(text_of(&dom, "claude-desktop-config"))).unwrap();
    let args = claude["mcpServers"]["echo-tools-co"]["args"]
        .as_array()
        .unwrap();
    assert!(args.contains(&json!(s.url)), "{claude}");
    assert!(unescape(text_of(&dom, "claude-code-config")).contains(&s.url));
    let dify = unescape(text_of(&dom, "dify-config"));
    assert!(dify.contains(&format!("Server URL: {}", s.url)), "{dify}");
    assert!(dify.contains("Header Value: Bearer <YOUR_TOKEN>"), "{dify}");
    // It says plainly that tokens come from the owner, not from OAuth.
    assert!(text_of(&dom, "no-oauth").contains("There is no OAuth sign-in"));
    // The page's script ran and wired a copy button per client.
    assert!(
        dom.contains("<body data-copy-buttons=\"5\">"),
        "{}",
        &dom[dom.find("<body").unwrap()..][..60]
    );
    // No secret reaches the page.
    assert!(!dom.contains("never-shown"));
}

#[tokio::test]
async fn mcp_clients_and_unknown_servers_do_not_get_the_page() {
    let s = serve().await;
    let client = reqwest::Client::new();
    // An MCP client's GET (event stream) still needs a token.
    let r = client
        .get(&s.url)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A browser asking for a server that does not exist.
    let r = client
        .get(format!(
            "{}/mcp/00000000-0000-0000-0000-000000000000",
            s.base
        ))
        .header("Accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("No such MCP server"));
    // A page from another site cannot read it either.
    let r = client
        .get(&s.url)
        .header("Accept", "text/html")
        .header("Origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}
