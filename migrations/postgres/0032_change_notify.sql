-- Replicas learn of each other's changes through LISTEN/NOTIFY on the
-- channel `plugind_changes`: every committed change to these tables sends
-- one small JSON payload naming the row (never its documents, which can
-- exceed NOTIFY's 8000-byte limit). Notifications leave at commit, so a
-- listener never hears of a change it cannot read yet. SQLite has one
-- daemon and no such channel. Endpoints need no trigger: every request
-- reads its endpoint row, and the installation behind it is covered here.

CREATE OR REPLACE FUNCTION plugind_notify_change() RETURNS trigger AS $$
DECLARE
    rec RECORD;
    payload JSON;
BEGIN
    IF TG_OP = 'DELETE' THEN
        rec := OLD;
    ELSE
        rec := NEW;
    END IF;
    IF TG_TABLE_NAME = 'plugins' THEN
        payload := json_build_object('table', TG_TABLE_NAME, 'op', TG_OP,
            'identifier', rec.plugin_unique_identifier, 'install_type', rec.install_type);
    ELSIF TG_TABLE_NAME = 'plugin_installations' THEN
        payload := json_build_object('table', TG_TABLE_NAME, 'op', TG_OP,
            'tenant_id', rec.tenant_id, 'plugin_id', rec.plugin_id,
            'identifier', rec.plugin_unique_identifier);
    ELSIF TG_TABLE_NAME = 'serverless_runtimes' THEN
        payload := json_build_object('table', TG_TABLE_NAME, 'op', TG_OP,
            'identifier', rec.plugin_unique_identifier);
    ELSIF TG_TABLE_NAME = 'mcp_servers' THEN
        payload := json_build_object('table', TG_TABLE_NAME, 'op', TG_OP, 'id', rec.id);
    ELSIF TG_TABLE_NAME = 'mcp_tokens' THEN
        payload := json_build_object('table', TG_TABLE_NAME, 'op', TG_OP, 'id', rec.server_id);
    ELSE
        payload := json_build_object('table', TG_TABLE_NAME, 'op', TG_OP);
    END IF;
    PERFORM pg_notify('plugind_changes', payload::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

-- A plugin row's `refers` changes with every installation of it, which the
-- plugin_installations trigger already reports.
CREATE TRIGGER plugins_notify AFTER INSERT OR DELETE ON plugins
    FOR EACH ROW EXECUTE FUNCTION plugind_notify_change();
CREATE TRIGGER plugin_installations_notify AFTER INSERT OR UPDATE OR DELETE ON plugin_installations
    FOR EACH ROW EXECUTE FUNCTION plugind_notify_change();
CREATE TRIGGER serverless_runtimes_notify AFTER INSERT OR UPDATE OR DELETE ON serverless_runtimes
    FOR EACH ROW EXECUTE FUNCTION plugind_notify_change();
CREATE TRIGGER mcp_servers_notify AFTER INSERT OR UPDATE OR DELETE ON mcp_servers
    FOR EACH ROW EXECUTE FUNCTION plugind_notify_change();
CREATE TRIGGER mcp_tokens_notify AFTER INSERT OR UPDATE OR DELETE ON mcp_tokens
    FOR EACH ROW EXECUTE FUNCTION plugind_notify_change();
