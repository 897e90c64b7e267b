-- Migration 2: per-binding state, and the SQLSTATE of documents PostgreSQL could not build.

-- One row per index: the shape of its tables when last seen, a background refresh of
-- its documents after that shape changed, and why the binding is paused, if it is.
CREATE TABLE indexsync.binding_state (
    index_name text PRIMARY KEY,
    fingerprint text,
    refresh_after text,
    refresh_done bigint NOT NULL DEFAULT 0,
    refreshing boolean NOT NULL DEFAULT false,
    refresh_started_at timestamptz,
    paused_reason text,
    paused_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A dead letter from PostgreSQL (the document query failed for that row) has no HTTP
-- status; its SQLSTATE says what went wrong.
ALTER TABLE indexsync.dead_letters ADD COLUMN sqlstate text;
