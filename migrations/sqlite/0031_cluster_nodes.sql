-- Replicas: one row per running daemon (node), refreshed by its heartbeat.
-- A node whose heartbeat_at is older than the node timeout is dead; the
-- other nodes take its rows over and delete it. On SQLite the daemon is the
-- one node and its row the only one.
-- `address` is the base URL of the node's internal listener ('' when it has
-- none). Timestamps are unix microseconds of the database's clock.

CREATE TABLE cluster_nodes (
    id TEXT PRIMARY KEY,
    address TEXT NOT NULL DEFAULT '',
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    draining BOOLEAN NOT NULL DEFAULT FALSE
);
