-- Install tasks are leased by the node running them: `node_id` renews
-- `lease_expires_at` with its heartbeat. Recovery touches only tasks whose
-- lease expired (or that no node leased), so a starting node never fails
-- the work of a live one.

ALTER TABLE install_tasks ADD COLUMN node_id TEXT;
ALTER TABLE install_tasks ADD COLUMN lease_expires_at BIGINT;
CREATE INDEX idx_install_tasks_node ON install_tasks (node_id);
