//! The page a person sees when opening an MCP server's URL in a browser:
//! the server's name and tools, and configuration to paste into common MCP
//! clients. It never shows a token; the configurations carry a placeholder.

use rmcp::model::Tool;
use serde_json::{json, Value};

/// What the configurations say where the access token goes.
pub const TOKEN_PLACEHOLDER: &str = "<YOUR_TOKEN>";

/// Whether a request is a browser asking for a page rather than an MCP
/// client: a GET that accepts HTML and not an event stream.
pub fn wants_page(method: &axum::http::Method, headers: &axum::http::HeaderMap) -> bool {
    if method != axum::http::Method::GET {
        return false;
    }
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains("text/html") && !accept.contains("text/event-stream")
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The key a server gets in client configuration files: its name in
/// lower case with runs of other characters as `-`.
pub fn config_key(name: &str) -> String {
    let mut key = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            key.push(c.to_ascii_lowercase());
        } else if !key.ends_with('-') {
            key.push('-');
        }
    }
    let key = key.trim_matches('-');
    if key.is_empty() {
        "plugind".to_owned()
    } else {
        key.to_owned()
    }
}

/// One client's configuration: its name, where it goes, and the text.
pub struct ClientConfig {
    pub id: &'static str,
    pub client: &'static str,
    pub location: &'static str,
    pub text: String,
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("JSON values serialize")
}

/// Configurations for Claude Desktop, Cursor, VS Code, Claude Code and Dify.
pub fn client_configs(name: &str, url: &str) -> Vec<ClientConfig> {
    let key = config_key(name);
    let bearer = format!("Bearer {TOKEN_PLACEHOLDER}");
    vec![
        ClientConfig {
            id: "claude-desktop",
            client: "Claude Desktop",
            location: "claude_desktop_config.json (Settings → Developer → Edit Config); Claude Desktop reaches remote servers through the mcp-remote bridge",
            text: pretty(&json!({"mcpServers": {key.clone(): {
                "command": "npx",
                "args": ["-y", "mcp-remote", url, "--header", "Authorization:${AUTH_HEADER}"],
                "env": {"AUTH_HEADER": bearer},
            }}})),
        },
        ClientConfig {
            id: "cursor",
            client: "Cursor",
            location: "~/.cursor/mcp.json, or .cursor/mcp.json in a project",
            text: pretty(&json!({"mcpServers": {key.clone(): {
                "url": url,
                "headers": {"Authorization": bearer},
            }}})),
        },
        ClientConfig {
            id: "vscode",
            client: "VS Code",
            location: ".vscode/mcp.json in the workspace; VS Code asks for the token once",
            text: pretty(&json!({
                "inputs": [{
                    "type": "promptString",
                    "id": format!("{key}-token"),
                    "description": format!("Access token of the {name} MCP server"),
                    "password": true,
                }],
                "servers": {key.clone(): {
                    "type": "http",
                    "url": url,
                    "headers": {"Authorization": format!("Bearer ${{input:{key}-token}}")},
                }},
            })),
        },
        ClientConfig {
            id: "claude-code",
            client: "Claude Code",
            location: "a terminal",
            text: format!(
                "claude mcp add --transport http {key} {url} --header \"Authorization: {bearer}\""
            ),
        },
        ClientConfig {
            id: "dify",
            client: "Dify",
            location: "Tools → MCP → Add MCP Server (HTTP): the URL as Server URL, the token as a header under Headers (not Authentication, which is OAuth)",
            text: format!("Server URL: {url}\nHeader Name: Authorization\nHeader Value: {bearer}"),
        },
    ]
}

/// The page of a server named `name` (with `description`) at `url`
/// exposing `tools`.
pub fn render(name: &str, description: &str, url: &str, tools: &[Tool]) -> String {
    let mut tool_items = String::new();
    for t in tools {
        let params: Vec<String> = t
            .input_schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().map(|k| escape(k)).collect())
            .unwrap_or_default();
        tool_items.push_str(&format!(
            "<li class=\"tool\"><code class=\"tool-name\">{}</code><p class=\"tool-description\">{}</p><p class=\"tool-params\">{}</p></li>\n",
            escape(&t.name),
            escape(t.description.as_deref().unwrap_or("")),
            if params.is_empty() {
                "No parameters".to_owned()
            } else {
                format!("Parameters: {}", params.join(", "))
            }
        ));
    }
    if tools.is_empty() {
        tool_items.push_str("<li class=\"empty\">This server exposes no tools yet.</li>\n");
    }
    let mut configs = String::new();
    for c in client_configs(name, url) {
        configs.push_str(&format!(
            "<section class=\"client\" id=\"{id}\"><h3>{client}</h3><p class=\"where\">{location}</p>\
             <pre><code id=\"{id}-config\">{text}</code></pre>\
             <button type=\"button\" data-copy=\"{id}-config\">Copy</button></section>\n",
            id = c.id,
            client = escape(c.client),
            location = escape(c.location),
            text = escape(&c.text),
        ));
    }
    let description = if description.is_empty() {
        String::new()
    } else {
        format!("<p class=\"description\">{}</p>", escape(description))
    };
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title} · MCP server</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #1f2328; }}
code, pre {{ font-family: ui-monospace, monospace; }}
pre {{ background: #f6f8fa; padding: .75rem; overflow-x: auto; border-radius: 6px; }}
.url {{ background: #f6f8fa; padding: .2rem .4rem; border-radius: 4px; }}
.tool {{ margin-bottom: .75rem; }}
.tool p {{ margin: .2rem 0; }}
.tool-params, .where {{ color: #59636e; font-size: .9rem; }}
button {{ cursor: pointer; }}
</style>
</head>
<body>
<h1 id="server-name">{title}</h1>
{description}
<p>An MCP server (Streamable HTTP) at <code class="url" id="server-url">{url}</code>.
Clients need an access token, sent as <code>Authorization: Bearer …</code>; ask the
server's owner for one and put it where the configurations below say
<code>{placeholder}</code>.</p>
<p id="no-oauth">There is no OAuth sign-in: the server's owner issues the tokens
(<code>plugind mcp token</code> or the management API) and can revoke them. Give the token
to the client as a header, as below; a client that can only sign in with OAuth cannot
connect.</p>
<h2>Tools</h2>
<ul id="tools">
{tool_items}</ul>
<h2>Connect a client</h2>
{configs}<script>
for (const b of document.querySelectorAll("button[data-copy]")) {{
  b.addEventListener("click", () => {{
    const text = document.getElementById(b.dataset.copy).textContent;
    navigator.clipboard.writeText(text).then(() => {{ b.textContent = "Copied"; }});
  }});
}}
document.body.dataset.copyButtons = document.querySelectorAll("button[data-copy]").length;
</script>
</body>
</html>
"#,
        title = escape(name),
        url = escape(url),
        placeholder = escape(TOKEN_PLACEHOLDER),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_descriptions_are_escaped() {
        let page = render("<b>x</b> & co", "a \"quoted\" one", "http://h/mcp/1", &[]);
        assert!(page.contains("&lt;b&gt;x&lt;/b&gt; &amp; co"));
        assert!(page.contains("a &quot;quoted&quot; one"));
        assert!(!page.contains("<b>x</b>"));
    }

    #[test]
    fn config_keys_are_slugs() {
        assert_eq!(config_key("Echo Server (prod)"), "echo-server-prod");
        assert_eq!(config_key("!!!"), "plugind");
    }

    #[test]
    fn configs_point_at_the_url_with_a_placeholder_token() {
        for c in client_configs("My tools", "https://d.example/mcp/abc/mcp") {
            assert!(
                c.text.contains("https://d.example/mcp/abc/mcp"),
                "{}",
                c.client
            );
            if c.id != "dify" {
                assert!(c.text.contains("my-tools"), "{}", c.client);
            }
        }
        let cursor = &client_configs("My tools", "https://d.example/mcp/abc")[1];
        let v: Value = serde_json::from_str(&cursor.text).unwrap();
        assert_eq!(
            v["mcpServers"]["my-tools"]["headers"]["Authorization"],
            format!("Bearer {TOKEN_PLACEHOLDER}")
        );
    }
}
