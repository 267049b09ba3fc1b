-- MCP gateway: servers a tenant exposes over MCP and their access tokens.
-- `config` is the JSON server configuration (tools, apps, fixed values);
-- `credentials` is the sealed provider credentials (base64 of nonce and
-- ciphertext), never stored in clear. Tokens are kept as SHA-256 hex only.

CREATE TABLE mcp_servers (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    tenant_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    user_id TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL,
    credentials TEXT NOT NULL DEFAULT '',
    UNIQUE (tenant_id, name)
);

CREATE TABLE mcp_tokens (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    server_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    token_hash TEXT NOT NULL UNIQUE,
    hint TEXT NOT NULL DEFAULT ''
);
CREATE INDEX idx_mcp_tokens_server ON mcp_tokens (server_id);
