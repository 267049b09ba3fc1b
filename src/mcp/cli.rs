//! `plugind mcp …`: manage MCP servers and tokens from the command line,
//! straight against the daemon's database. Output is JSON on stdout.

use clap::Subcommand;
use serde_json::{json, Map, Value};

use super::records::{
    AppRef, Credentials, McpStore, NewServer, ServerConfig, ToolRef, ToolSelection,
};
use super::seal::Sealer;
use crate::settings::{DatabaseTarget, Settings};
use crate::store::Store;

/// The `plugind mcp` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum McpCommand {
    /// List a tenant's MCP servers.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Create an MCP server.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Dify user id the calls are made as.
        #[arg(long, default_value = "")]
        user_id: String,
        /// Expose every installed tool.
        #[arg(long, conflicts_with = "tool")]
        all_tools: bool,
        /// A tool to expose, as provider/tool (repeatable).
        #[arg(long)]
        tool: Vec<String>,
        /// A Dify app to expose, as app_id[:mode] (repeatable).
        #[arg(long)]
        app: Vec<String>,
        /// Provider credentials as provider=<JSON object> (repeatable).
        #[arg(long)]
        credentials: Vec<String>,
    },
    /// Delete an MCP server and its tokens.
    Delete {
        #[arg(long)]
        tenant: String,
        server_id: String,
    },
    /// Create an access token; it is printed once.
    Token {
        #[arg(long)]
        tenant: String,
        server_id: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Revoke an access token.
    Revoke {
        #[arg(long)]
        tenant: String,
        server_id: String,
        token_id: String,
    },
}

fn parse_tool(s: &str) -> anyhow::Result<ToolRef> {
    let (provider, tool) = s
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("--tool takes provider/tool, got {s:?}"))?;
    Ok(ToolRef {
        plugin_id: None,
        provider: provider.to_owned(),
        tool: tool.to_owned(),
        name: None,
    })
}

fn parse_app(s: &str) -> AppRef {
    let (app_id, mode) = match s.split_once(':') {
        Some((id, mode)) => (id, Some(mode.to_owned())),
        None => (s, None),
    };
    AppRef {
        app_id: app_id.to_owned(),
        name: None,
        description: None,
        mode,
    }
}

fn parse_credentials(items: &[String]) -> anyhow::Result<Credentials> {
    let mut out = Credentials::new();
    for item in items {
        let (provider, value) = item
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--credentials takes provider=<JSON object>"))?;
        let value: Map<String, Value> = serde_json::from_str(value)
            .map_err(|e| anyhow::anyhow!("credentials of {provider}: {e}"))?;
        out.insert(provider.to_owned(), value);
    }
    Ok(out)
}

/// Runs one subcommand with the daemon's settings.
pub async fn run(command: McpCommand, settings: &Settings) -> anyhow::Result<()> {
    let url = match settings.database_target().map_err(anyhow::Error::msg)? {
        DatabaseTarget::Sqlite(path) => format!("sqlite://{}", path.display()),
        DatabaseTarget::Postgres(url) => url.expose().to_owned(),
    };
    let store = Store::connect(&url, 2).await?;
    let records = McpStore::new(store.clone(), Sealer::from_settings(settings));
    let out = execute(&records, command).await;
    store.close().await;
    println!("{}", serde_json::to_string_pretty(&out?)?);
    Ok(())
}

/// Runs one subcommand against `records` and returns what it prints.
pub async fn execute(records: &McpStore, command: McpCommand) -> anyhow::Result<Value> {
    Ok(match command {
        McpCommand::List { tenant } => Value::Array(
            records
                .list(&tenant)
                .await?
                .iter()
                .map(super::shown)
                .collect(),
        ),
        McpCommand::Create {
            tenant,
            name,
            description,
            user_id,
            all_tools,
            tool,
            app,
            credentials,
        } => {
            let tools = if all_tools {
                ToolSelection::Keyword("all".into())
            } else {
                ToolSelection::List(
                    tool.iter()
                        .map(|t| parse_tool(t))
                        .collect::<Result<_, _>>()?,
                )
            };
            let server = records
                .create(
                    &tenant,
                    NewServer {
                        name,
                        description,
                        user_id,
                        config: ServerConfig {
                            tools,
                            apps: app.iter().map(|a| parse_app(a)).collect(),
                            fixed_values: Default::default(),
                        },
                        credentials: parse_credentials(&credentials)?,
                    },
                )
                .await?;
            super::shown(&server)
        }
        McpCommand::Delete { tenant, server_id } => {
            json!({"deleted": records.delete(&tenant, &server_id).await?})
        }
        McpCommand::Token {
            tenant,
            server_id,
            name,
        } => {
            let (info, token) = records.create_token(&tenant, &server_id, &name).await?;
            json!({"token": token, "info": info})
        }
        McpCommand::Revoke {
            tenant,
            server_id,
            token_id,
        } => json!({"revoked": records.delete_token(&tenant, &server_id, &token_id).await?}),
    })
}
