-- Initial schema. Timestamps are unix microseconds (BIGINT) and ids are UUID
-- strings, so one set of queries serves SQLite and PostgreSQL alike.

CREATE TABLE plugins (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    plugin_unique_identifier TEXT NOT NULL UNIQUE,
    plugin_id TEXT NOT NULL,
    refers BIGINT NOT NULL DEFAULT 0,
    install_type TEXT NOT NULL,
    manifest_type TEXT NOT NULL DEFAULT 'plugin',
    remote_declaration TEXT,
    source TEXT NOT NULL DEFAULT ''
);
CREATE INDEX idx_plugins_plugin_id ON plugins (plugin_id);

CREATE TABLE plugin_installations (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    tenant_id TEXT NOT NULL,
    plugin_id TEXT NOT NULL,
    plugin_unique_identifier TEXT NOT NULL,
    runtime_type TEXT NOT NULL,
    endpoints_setups BIGINT NOT NULL DEFAULT 0,
    endpoints_active BIGINT NOT NULL DEFAULT 0,
    source TEXT NOT NULL DEFAULT '',
    meta TEXT NOT NULL DEFAULT '{}',
    UNIQUE (tenant_id, plugin_id)
);
CREATE INDEX idx_plugin_installations_identifier ON plugin_installations (plugin_unique_identifier);

CREATE TABLE plugin_declarations (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    plugin_unique_identifier TEXT NOT NULL UNIQUE,
    plugin_id TEXT NOT NULL,
    declaration TEXT NOT NULL
);
CREATE INDEX idx_plugin_declarations_plugin_id ON plugin_declarations (plugin_id);

CREATE TABLE install_tasks (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    status TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    total_plugins BIGINT NOT NULL,
    completed_plugins BIGINT NOT NULL,
    plugins TEXT NOT NULL
);
CREATE INDEX idx_install_tasks_status ON install_tasks (status);
CREATE INDEX idx_install_tasks_tenant ON install_tasks (tenant_id, created_at);

CREATE TABLE endpoints (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    name TEXT NOT NULL DEFAULT 'default',
    hook_id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL DEFAULT '',
    plugin_id TEXT NOT NULL,
    expired_at BIGINT NOT NULL DEFAULT 0,
    enabled BOOLEAN NOT NULL DEFAULT FALSE,
    settings TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_endpoints_tenant_plugin ON endpoints (tenant_id, plugin_id);

CREATE TABLE serverless_runtimes (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    plugin_unique_identifier TEXT NOT NULL UNIQUE,
    function_url TEXT NOT NULL DEFAULT '',
    function_name TEXT NOT NULL DEFAULT '',
    function_version TEXT NOT NULL DEFAULT '',
    type TEXT NOT NULL DEFAULT 'serverless',
    checksum TEXT NOT NULL DEFAULT ''
);
CREATE INDEX idx_serverless_runtimes_checksum ON serverless_runtimes (checksum);

-- One table for the tool/model/agent_strategy/datasource/trigger installation
-- rows of the reference: they share every column.
CREATE TABLE provider_installations (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    category TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    plugin_unique_identifier TEXT NOT NULL,
    plugin_id TEXT NOT NULL
);
CREATE INDEX idx_provider_installations_lookup ON provider_installations (tenant_id, category, plugin_id);

CREATE TABLE plugin_storage (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    tenant_id TEXT NOT NULL,
    plugin_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    UNIQUE (tenant_id, plugin_id, key)
);

CREATE TABLE debugging_keys (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    tenant_id TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL UNIQUE,
    expires_at BIGINT NOT NULL
);

CREATE TABLE plugin_readmes (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    plugin_unique_identifier TEXT NOT NULL,
    language TEXT NOT NULL,
    content TEXT NOT NULL,
    UNIQUE (plugin_unique_identifier, language)
);
