-- Migration 1: the schema as releases before versioned migrations created it.
-- Idempotent, because an install made before versions were recorded already holds it:
-- such an install counts as version 0 and replays this file harmlessly.

-- One sequence for every change. CACHE 1 matters: a cached sequence hands out values out of
-- order across sessions, and versions must grow in commit order for any one row.
CREATE SEQUENCE IF NOT EXISTS indexsync.change_seq AS bigint CACHE 1;

-- Append-only: triggers only ever INSERT here, so writers never wait on each other or on
-- the worker. kind 'd' names a document; kind 't' is a TRUNCATE marker (doc_id is NULL);
-- kind 'k' is the key of a row of the dependent table `source`, mapped to documents later.
CREATE TABLE IF NOT EXISTS indexsync.outbox (
    seq bigint PRIMARY KEY DEFAULT nextval('indexsync.change_seq'),
    index_name text NOT NULL,
    doc_id text,
    kind "char" NOT NULL DEFAULT 'd',
    source text,
    created_at timestamptz NOT NULL DEFAULT now()
) WITH (
    -- A queue table: vacuum it early and often so claims stay index scans over few dead rows.
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 5000
);

-- Documents Elasticsearch refused for a reason a retry cannot fix.
CREATE TABLE IF NOT EXISTS indexsync.dead_letters (
    id bigserial PRIMARY KEY,
    index_name text NOT NULL,
    doc_id text NOT NULL,
    seq bigint NOT NULL,
    status integer,
    error_type text,
    reason text,
    failed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS dead_letters_index_name ON indexsync.dead_letters (index_name, doc_id);

-- A rebuild in progress: while a row exists, workers write every change to `target` too.
CREATE TABLE IF NOT EXISTS indexsync.rebuilds (
    alias text PRIMARY KEY,
    target text NOT NULL,
    watermark bigint,
    in_place boolean NOT NULL DEFAULT false,
    last_key text,
    rows_done bigint NOT NULL DEFAULT 0,
    rows_total bigint,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- When each index last had a batch land, as workers report it (every few seconds at most).
CREATE TABLE IF NOT EXISTS indexsync.progress (
    index_name text PRIMARY KEY,
    last_success_at timestamptz NOT NULL
);

-- Install-time facts the worker must agree with (notify mode, schema version).
CREATE TABLE IF NOT EXISTS indexsync.meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
