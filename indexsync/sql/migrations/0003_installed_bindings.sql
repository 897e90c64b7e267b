-- Migration 3: the bindings as install applied them. The database, not the file a worker
-- read when it started, is the truth of what is installed: running workers compare
-- `bindings_version` with the one they adopted, and take the new definitions without a
-- restart. A change of an index that no worker knows stays in the outbox.

CREATE TABLE indexsync.bindings (
    index_name text PRIMARY KEY,
    -- The `[indexes.<alias>]` table of the bindings file, as install validated it.
    spec jsonb NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Bumped by every install that adds, changes or removes a binding; read by every batch.
INSERT INTO indexsync.meta (key, value) VALUES ('bindings_version', '0')
ON CONFLICT (key) DO NOTHING;

-- A backfill's floor: the sequence's value when install recorded it. Every document live
-- sync writes after that carries a larger version and a newer read, so the backfill skips
-- it instead of writing the same rows twice (a large import reaches the outbox too).
ALTER TABLE indexsync.rebuilds ADD COLUMN floor bigint;

-- This database's id, made once: an index records its owner by it (with the database's
-- name and the cluster's system identifier), so a copy of the database is not its owner.
INSERT INTO indexsync.meta (key, value) VALUES ('install_id', gen_random_uuid()::text)
ON CONFLICT (key) DO NOTHING;

-- Workers alive: each records a heartbeat every few seconds and removes its row when it
-- stops. `status`, `check` and /readyz call work that waits with no live worker a problem.
CREATE TABLE indexsync.workers (
    worker_id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    version text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at timestamptz NOT NULL DEFAULT now()
);
