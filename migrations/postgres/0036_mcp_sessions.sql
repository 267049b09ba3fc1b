-- Which node holds an MCP session (the revisions with Mcp-Session-Id keep
-- their state in the process that answered `initialize`): a request of
-- that session arriving at another node is forwarded there. Written only
-- over PostgreSQL, where other nodes exist.

CREATE TABLE mcp_sessions (
    session_id TEXT PRIMARY KEY,
    server_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX idx_mcp_sessions_node ON mcp_sessions (node_id);
