-- Which node a debugging (remote) plugin is connected to: calls arriving at
-- another node are forwarded there. A row is written before the plugin's
-- installation and removed after it; an installation whose owner row is
-- missing, or whose node is dead, is a leftover any node removes.

CREATE TABLE remote_owners (
    plugin_unique_identifier TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    plugin_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    -- One connection: a reconnect's claim replaces it, and only the
    -- connection holding it releases it.
    holder TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX idx_remote_owners_node ON remote_owners (node_id);
