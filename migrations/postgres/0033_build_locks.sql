-- Build locks: at most one node builds a given install (a plugin's
-- environment in a shared working path, a Lambda artifact and function) at
-- a time. `holder` is one acquisition; `node_id` renews it with its
-- heartbeat, so the lock of a dead node expires with its lease.

CREATE TABLE build_locks (
    key TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    node_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX idx_build_locks_node ON build_locks (node_id);
