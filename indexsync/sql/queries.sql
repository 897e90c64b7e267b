-- indexsync's named queries. Each starts with `-- name: <name>` and a line saying what it
-- does; `indexsync.queries` loads them by name and `indexsync.store` runs them.
-- Queries built from a binding (document reads, capture triggers) are composed with
-- psycopg.sql in documents.py and capture.py instead.

-- === the schema ===========================================================================

-- name: schema_exists
-- Whether the indexsync schema exists.
SELECT to_regnamespace('indexsync') IS NOT NULL;

-- name: create_schema
-- The schema itself; its objects come from the numbered migrations.
CREATE SCHEMA indexsync;

-- name: drop_schema
-- Everything indexsync owns in the database; the cascade takes the triggers too.
DROP SCHEMA IF EXISTS indexsync CASCADE;

-- name: lock_timeout
-- DDL waits this long at most for a table's lock, instead of queueing writers behind it.
SET LOCAL lock_timeout = '30s';

-- name: read_only
-- `check` and `--print-sql` change nothing.
SET TRANSACTION READ ONLY;

-- name: migrations_lock
-- Serialises concurrent installs: two would otherwise race to apply the same migration.
SELECT pg_advisory_xact_lock(hashtext('indexsync.migrations'));

-- name: meta_exists
-- Whether the meta table exists (it does from migration 1 on).
SELECT to_regclass('indexsync.meta') IS NOT NULL;

-- name: get_meta
-- One install-time fact.
SELECT value FROM indexsync.meta WHERE key = %(key)s;

-- name: set_meta
-- Record one install-time fact.
INSERT INTO indexsync.meta (key, value) VALUES (%(key)s, %(value)s)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
WHERE meta.value IS DISTINCT FROM EXCLUDED.value;

-- name: session_defaults
-- What the pinned settings would be in this session without indexsync's pinning: the
-- server's, database's and role's defaults, and the client's PGTZ and PGDATESTYLE.
SELECT lower(name), reset_val FROM pg_catalog.pg_settings WHERE lower(name) = ANY(%(names)s::text[]);

-- name: statement_timeout
-- Bound every query of a session (the health checks: a hanging check is worse than a failed one).
SELECT set_config('statement_timeout', %(timeout)s, false);

-- === the catalog ==========================================================================

-- name: resolve_table
-- A table named in the bindings file, as the catalog knows it.
SELECT c.oid, n.nspname AS schema, c.relname AS name, c.relkind AS kind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%(name)s);

-- name: table_columns
-- The live columns of a table and their types, in table order.
SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type
FROM pg_attribute a
WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- name: virtual_columns
-- Virtual generated columns (PostgreSQL 18) and the columns each is computed from: the
-- generation expression (a pg_attrdef row) depends normally on each column it reads. None
-- before 18, where attgenerated is never 'v'.
SELECT a.attname AS name,
       ARRAY(
           SELECT b.attname FROM pg_attrdef ad
           JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
           JOIN pg_attribute b ON b.attrelid = d.refobjid AND b.attnum = d.refobjsubid
           WHERE ad.adrelid = a.attrelid AND ad.adnum = a.attnum
             AND d.refclassid = 'pg_class'::regclass AND d.refobjid = a.attrelid
             AND d.refobjsubid > 0 AND d.deptype = 'n'
           ORDER BY b.attnum
       ) AS base
FROM pg_attribute a
WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = 'v';

-- name: primary_key
-- The primary key's columns and their types, in key order.
SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type
FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = %(oid)s AND i.indisprimary
ORDER BY array_position(i.indkey, a.attnum);

-- name: capture_functions
-- Every function of the indexsync schema, with its source.
SELECT p.proname AS name, p.prosrc AS source FROM pg_proc p
WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'indexsync');

-- name: capture_triggers
-- Every trigger that calls a function of the indexsync schema.
SELECT t.tgname AS name, n.nspname AS schema, c.relname AS "table", p.proname AS function
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_proc p ON p.oid = t.tgfoid
WHERE NOT t.tgisinternal
  AND p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'indexsync');

-- name: fingerprint
-- A digest of the columns and types of a binding's tables, in the order given.
SELECT md5(string_agg(
    c.oid::regclass::text || '.' || a.attname || ':' || format_type(a.atttypid, a.atttypmod),
    ',' ORDER BY u.n, a.attnum))
FROM unnest(%(schemas)s::text[], %(tables)s::text[]) WITH ORDINALITY AS u(s, t, n)
JOIN pg_class c ON c.oid = to_regclass(quote_ident(u.s) || '.' || quote_ident(u.t))
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped;

-- === the outbox: the worker's side ========================================================

-- name: claim
-- Claim and acknowledge in one round trip: the rows are deleted now, but the delete only
-- becomes visible at commit. A rollback hands them back; SKIP LOCKED lets other workers
-- take the rest meanwhile. Changes of paused indexes stay where they are.
-- Only changes of the indexes this worker syncs now are claimed: those of a paused index,
-- or of an index no binding of this worker knows, stay where they are.
DELETE FROM indexsync.outbox
WHERE seq IN (
    SELECT seq FROM indexsync.outbox
    WHERE index_name = ANY(%(active)s::text[])
      -- An index an operator paused is skipped from the next claim on, in every worker.
      AND index_name <> ALL(ARRAY(
          SELECT index_name FROM indexsync.binding_state WHERE held_at IS NOT NULL))
    ORDER BY seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
RETURNING seq, index_name, doc_id, kind, source, coalesce(origin, seq) AS origin, created_at,
          routing;

-- name: has_pending
-- Whether the outbox holds a row of an index this worker syncs, claimed by another worker or not.
SELECT EXISTS (
    SELECT FROM indexsync.outbox
    WHERE index_name = ANY(%(active)s::text[])
      AND index_name <> ALL(ARRAY(
          SELECT index_name FROM indexsync.binding_state WHERE held_at IS NOT NULL))
);

-- name: unbound_backlog
-- Changes waiting for an index that none of `known` names (no binding installed for it).
SELECT index_name, count(*) AS changes,
       extract(epoch FROM now() - min(created_at))::float8 AS oldest_seconds
FROM indexsync.outbox WHERE index_name <> ALL(%(known)s::text[]) GROUP BY index_name;

-- name: batch_context
-- The batch's version, drawn after its claim and before its re-read, the rebuilds in
-- progress (in-place rebuilds write through the alias already, so they need no second
-- target), whether any dead letter exists (without one, the batch has none to clear, and
-- skips a statement that would ship every id of the batch for nothing), and the version of
-- the installed bindings: a batch never builds documents from a definition older than it.
SELECT nextval('indexsync.change_seq') AS version,
       ARRAY(SELECT alias FROM indexsync.rebuilds WHERE NOT in_place ORDER BY alias) AS aliases,
       ARRAY(SELECT target FROM indexsync.rebuilds WHERE NOT in_place ORDER BY alias) AS targets,
       EXISTS (SELECT FROM indexsync.dead_letters) AS dead_letters,
       (SELECT value::bigint FROM indexsync.meta WHERE key = 'bindings_version') AS bindings_version;

-- name: requeue_changes
-- Claimed changes handed back as they were: kind and source matter (a dependent key, a
-- TRUNCATE marker), and so does the origin (a waiter for the change must go on waiting);
-- the seq does not (the version is drawn per batch).
INSERT INTO indexsync.outbox (index_name, doc_id, kind, source, origin, routing)
SELECT * FROM unnest(%(indexes)s::text[], %(ids)s::text[], %(kinds)s::"char"[], %(sources)s::text[],
                     %(origins)s::bigint[], %(routings)s::text[]);

-- name: requeue_documents
-- Documents of a batch queued again (refused for too long, or by a blocked index), with the
-- origin of the oldest change behind each.
INSERT INTO indexsync.outbox (index_name, doc_id, routing, origin)
SELECT * FROM unnest(%(indexes)s::text[], %(ids)s::text[], %(routings)s::text[],
                     %(origins)s::bigint[]);

-- name: enqueue_moved
-- Copies of routed documents under a routing they no longer have (verify --repair).
INSERT INTO indexsync.outbox (index_name, doc_id, routing)
SELECT %(index)s, * FROM unnest(%(ids)s::text[], %(routings)s::text[]);

-- name: enqueue_ids
-- Queue documents of one index (a repair, a refresh, a dead letter retried).
INSERT INTO indexsync.outbox (index_name, doc_id) SELECT %(index)s, unnest(%(ids)s::text[]);

-- name: pending_for_ids
-- Whether a change of any of these documents still waits in the outbox.
SELECT EXISTS (
    SELECT 1 FROM indexsync.outbox WHERE index_name = %(index)s AND doc_id = ANY(%(ids)s::text[])
);

-- name: next_seq
-- A version drawn now.
SELECT nextval('indexsync.change_seq');

-- name: last_seq
-- The sequence's high-water mark: no version written so far is above it.
SELECT last_value FROM indexsync.change_seq;

-- name: record_progress
-- When each index last had a batch land.
INSERT INTO indexsync.progress (index_name, last_success_at)
SELECT * FROM unnest(%(indexes)s::text[], %(times)s::timestamptz[])
ON CONFLICT (index_name) DO UPDATE SET last_success_at = EXCLUDED.last_success_at
WHERE progress.last_success_at < EXCLUDED.last_success_at;

-- === dead letters =========================================================================

-- name: add_dead_letters
-- Record documents that were refused, or could not be built; one letter per document, the
-- latest (a backfill and a live batch may both have tried the same document).
WITH replaced AS (
    DELETE FROM indexsync.dead_letters d
    USING unnest(%(indexes)s::text[], %(ids)s::text[]) AS u(index_name, doc_id)
    WHERE d.index_name = u.index_name AND d.doc_id = u.doc_id
)
INSERT INTO indexsync.dead_letters
    (index_name, doc_id, seq, status, error_type, reason, sqlstate, first_change, last_change)
SELECT * FROM unnest(%(indexes)s::text[], %(ids)s::text[], %(seqs)s::bigint[],
                     %(statuses)s::int[], %(types)s::text[], %(reasons)s::text[],
                     %(sqlstates)s::text[], %(firsts)s::bigint[], %(lasts)s::bigint[]);

-- name: clear_dead_letters
-- A document that landed at version v no longer needs the dead letters of older versions.
DELETE FROM indexsync.dead_letters d
USING unnest(%(indexes)s::text[], %(ids)s::text[], %(versions)s::bigint[])
    AS u(index_name, doc_id, version)
WHERE d.index_name = u.index_name AND d.doc_id = u.doc_id AND d.seq < u.version;

-- name: list_dead_letters
-- Dead letters, oldest first.
SELECT id, index_name, doc_id, seq, status, error_type, reason, failed_at, sqlstate
FROM indexsync.dead_letters
WHERE (%(index)s::text IS NULL OR index_name = %(index)s)
ORDER BY id
LIMIT %(limit)s;

-- name: retry_dead_letters
-- Retrying re-enqueues the ids with a fresh seq: the worker re-reads the row as it is now.
WITH gone AS (
    DELETE FROM indexsync.dead_letters
    WHERE (%(index)s::text IS NULL OR index_name = %(index)s)
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
    RETURNING index_name, doc_id
)
INSERT INTO indexsync.outbox (index_name, doc_id)
SELECT DISTINCT index_name, doc_id FROM gone;

-- === status ===============================================================================

-- name: backlog
-- Changes waiting per index, and the age of the oldest.
SELECT index_name, count(*) AS changes,
       extract(epoch FROM now() - min(created_at))::float8 AS oldest_seconds
FROM indexsync.outbox GROUP BY index_name;

-- name: progress
-- When each index last had a batch land.
SELECT index_name, last_success_at FROM indexsync.progress;

-- name: dead_letter_counts
-- Dead letters per index.
SELECT index_name, count(*) AS letters FROM indexsync.dead_letters GROUP BY index_name;

-- name: binding_states
-- Why an index is paused, and how far its refresh after a schema change is.
SELECT index_name, paused_reason, paused_at, refreshing, refresh_done, held_reason, held_at,
       held_by
FROM indexsync.binding_state;

-- name: rebuilds
-- Every rebuild in progress.
SELECT alias, target, watermark, in_place, last_key, rows_done, rows_total, started_at, updated_at
FROM indexsync.rebuilds;

-- === paused bindings and schema changes ===================================================

-- name: set_paused
-- Record why an index is paused (the first time: since when).
INSERT INTO indexsync.binding_state AS b (index_name, paused_reason, paused_at)
VALUES (%(index)s, %(reason)s, now())
ON CONFLICT (index_name) DO UPDATE
SET paused_reason = EXCLUDED.paused_reason, updated_at = now(),
    paused_at = CASE WHEN b.paused_reason IS NULL THEN now() ELSE b.paused_at END
WHERE b.paused_reason IS DISTINCT FROM EXCLUDED.paused_reason;

-- name: clear_paused
-- The index syncs again.
UPDATE indexsync.binding_state SET paused_reason = NULL, paused_at = NULL, updated_at = now()
WHERE index_name = %(index)s AND paused_reason IS NOT NULL;

-- name: observe_fingerprint
-- Record a binding's shape. Returns the fingerprint seen before (NULL the first time) and
-- whether it changed; a change starts a refresh from the first key.
WITH old AS (
    SELECT fingerprint FROM indexsync.binding_state WHERE index_name = %(index)s FOR UPDATE
), up AS (
    INSERT INTO indexsync.binding_state AS b (index_name, fingerprint)
    VALUES (%(index)s, %(fingerprint)s)
    ON CONFLICT (index_name) DO UPDATE
    SET fingerprint = EXCLUDED.fingerprint, updated_at = now(),
        refreshing = b.refreshing OR b.fingerprint IS NOT NULL,
        refresh_after = CASE WHEN b.fingerprint IS NULL THEN b.refresh_after END,
        refresh_done = CASE WHEN b.fingerprint IS NULL THEN b.refresh_done ELSE 0 END,
        refresh_started_at = CASE WHEN b.fingerprint IS NULL THEN b.refresh_started_at
                                  ELSE now() END
    WHERE b.fingerprint IS DISTINCT FROM EXCLUDED.fingerprint
    RETURNING 1
)
SELECT (SELECT fingerprint FROM old) AS before, EXISTS (SELECT FROM up) AS changed;

-- name: next_refresh
-- One refreshing index that no other worker is advancing right now.
SELECT index_name, refresh_after, refresh_done FROM indexsync.binding_state
WHERE refreshing AND index_name = ANY(%(indexes)s::text[])
ORDER BY updated_at LIMIT 1 FOR UPDATE SKIP LOCKED;

-- name: advance_refresh
-- A refresh's next chunk is queued.
UPDATE indexsync.binding_state
SET refresh_after = %(after)s, refresh_done = refresh_done + %(count)s,
    refreshing = %(more)s, updated_at = now()
WHERE index_name = %(index)s;

-- === rebuilds =============================================================================

-- name: get_rebuild
-- The rebuild of one alias, if one is in progress.
SELECT alias, target, watermark, in_place, last_key, rows_done, rows_total, started_at, updated_at,
       floor
FROM indexsync.rebuilds WHERE alias = %(alias)s;

-- name: start_rebuild
-- From this commit on, workers write every change of the alias to the target too.
INSERT INTO indexsync.rebuilds (alias, target, in_place, rows_total)
VALUES (%(alias)s, %(target)s, %(in_place)s, %(total)s);

-- name: start_backfill
-- install's backfill of a new index: an in-place rebuild whose watermark is drawn later.
-- Its floor is drawn with it: live sync writes every change after this at a larger version.
INSERT INTO indexsync.rebuilds (alias, target, in_place, floor)
VALUES (%(alias)s, %(target)s, true, nextval('indexsync.change_seq'))
ON CONFLICT (alias) DO NOTHING;

-- name: try_backfill_lock
-- One worker at a time backfills an index; the lock goes with the session if it dies.
SELECT pg_try_advisory_lock(hashtext('indexsync.backfill'), hashtext(%(alias)s));

-- name: backfill_unlock
-- The backfill is over, or this worker stops.
SELECT pg_advisory_unlock(hashtext('indexsync.backfill'), hashtext(%(alias)s));

-- name: unfinished_backfills
-- In-place rebuilds left unfinished (a killed install or reindex --in-place), but for those
-- of indexes an operator paused.
SELECT alias FROM indexsync.rebuilds
WHERE in_place AND alias <> ALL(ARRAY(
    SELECT index_name FROM indexsync.binding_state WHERE held_at IS NOT NULL));

-- name: set_watermark
-- The rebuild's V0, and the rows it expects to write.
UPDATE indexsync.rebuilds
SET watermark = %(watermark)s, rows_total = coalesce(%(total)s, rows_total), updated_at = now()
WHERE alias = %(alias)s;

-- name: rebuild_progress
-- The last key whose page has landed: a resume starts after it.
UPDATE indexsync.rebuilds SET last_key = %(last_key)s, rows_done = %(rows_done)s, updated_at = now()
WHERE alias = %(alias)s;

-- name: end_rebuild
-- The rebuild is over (swapped, finished in place, or abandoned).
DELETE FROM indexsync.rebuilds WHERE alias = %(alias)s;

-- name: draw_watermark
-- The watermark: a seq drawn now, and the transactions in progress at that moment.
SELECT nextval('indexsync.change_seq') AS watermark, pg_current_snapshot()::text AS snapshot;

-- name: in_progress
-- How many transactions of a snapshot are still running.
SELECT count(*) FROM pg_snapshot_xip(%(snapshot)s::pg_snapshot) AS x
WHERE pg_xact_status(x) = 'in progress';

-- name: current_snapshot
-- The transactions running now.
SELECT pg_current_snapshot()::text;

-- === installed bindings ===================================================================

-- name: installed_bindings
-- Every binding install applied, as it validated it.
SELECT index_name, spec FROM indexsync.bindings ORDER BY index_name;

-- name: bindings_version
-- How many times install changed the set of bindings; a worker compares it with its own.
SELECT value::bigint FROM indexsync.meta WHERE key = 'bindings_version';

-- name: put_binding
-- Record a binding; returns whether it is new or its definition changed.
INSERT INTO indexsync.bindings AS b (index_name, spec) VALUES (%(index)s, %(spec)s)
ON CONFLICT (index_name) DO UPDATE SET spec = EXCLUDED.spec, updated_at = now()
WHERE b.spec IS DISTINCT FROM EXCLUDED.spec
RETURNING (xmax = 0) AS added;

-- name: bump_bindings_version
-- Tell running workers that the installed bindings changed.
UPDATE indexsync.meta SET value = (value::bigint + 1)::text WHERE key = 'bindings_version';

-- name: forget_binding
-- Everything indexsync keeps for one index whose binding install removed: its queued
-- changes, dead letters, rebuild and state go with it. The index itself stays.
WITH b AS (DELETE FROM indexsync.bindings WHERE index_name = %(index)s),
s AS (DELETE FROM indexsync.binding_state WHERE index_name = %(index)s),
r AS (DELETE FROM indexsync.rebuilds WHERE alias = %(index)s),
p AS (DELETE FROM indexsync.progress WHERE index_name = %(index)s),
d AS (DELETE FROM indexsync.dead_letters WHERE index_name = %(index)s RETURNING 1),
o AS (DELETE FROM indexsync.outbox WHERE index_name = %(index)s RETURNING 1)
SELECT (SELECT count(*) FROM o) AS changes, (SELECT count(*) FROM d) AS dead_letters;

-- name: start_refresh
-- Re-queue every document of an index from its first key, at the refresh's bounded rate
-- (its binding changed: every document may read differently now).
INSERT INTO indexsync.binding_state AS b (index_name, refreshing, refresh_started_at)
VALUES (%(index)s, true, now())
ON CONFLICT (index_name) DO UPDATE
SET refreshing = true, refresh_after = NULL, refresh_done = 0, refresh_started_at = now(),
    updated_at = now();

-- === ownership =============================================================================

-- name: database_identity
-- Who this database is, as indexes record their owner. The cluster's system identifier
-- needs a right that roles without pg_monitor lack; without it the rest must do.
SELECT (SELECT value FROM indexsync.meta WHERE key = 'install_id') AS install_id,
       current_database() AS database,
       CASE WHEN has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')
            THEN (SELECT system_identifier::text FROM pg_catalog.pg_control_system())
       END AS system_identifier;

-- === workers ===============================================================================

-- name: heartbeat
-- A worker is alive; rows of workers silent for an hour are cleared on the way.
WITH gone AS (
    DELETE FROM indexsync.workers WHERE seen_at < now() - interval '1 hour'
)
INSERT INTO indexsync.workers (worker_id, host, pid, version)
VALUES (%(worker)s, %(host)s, %(pid)s, %(version)s)
ON CONFLICT (worker_id) DO UPDATE SET seen_at = now();

-- name: worker_stopped
-- A worker that stops cleanly says so.
DELETE FROM indexsync.workers WHERE worker_id = %(worker)s;

-- name: workers
-- Every worker seen in the last hour, and how long ago.
SELECT worker_id, host, pid, version, started_at,
       extract(epoch FROM now() - seen_at)::float8 AS silent_seconds
FROM indexsync.workers ORDER BY seen_at DESC;

-- === read-your-writes =====================================================================

-- name: waiting_indexes
-- Which of these indexes have waiters in `indexsync.wait_for_search` now, and the smallest
-- seq any of them waits for. Each waiter holds (wait_key(index), its seq's low 31 bits)
-- while it waits; the seq is rebuilt from the sequence's value, which is at most 2^31 ahead.
SELECT i AS index_name,
       min(s.last_value - ((s.last_value - l.objid::bigint) %% 2147483648 + 2147483648)
                          %% 2147483648) AS target
FROM unnest(%(indexes)s::text[]) AS i
JOIN pg_catalog.pg_locks l
  ON l.locktype = 'advisory' AND l.objsubid = 2 AND l.classid = indexsync.wait_key(i)::oid
CROSS JOIN indexsync.change_seq s
GROUP BY i;

-- name: try_lead
-- Become the worker that refreshes an index for its waiters, if no other is; the lock goes
-- with the session. Returns the generation now published, or NULL when another leads.
WITH lead AS (
    SELECT pg_try_advisory_lock(indexsync.lead_key(%(index)s)) AS got
), row_ AS (
    INSERT INTO indexsync.searchable (index_name) SELECT %(index)s FROM lead WHERE got
    ON CONFLICT (index_name) DO NOTHING
)
SELECT CASE WHEN got THEN coalesce(
    (SELECT generation FROM indexsync.searchable WHERE index_name = %(index)s), 0) END
FROM lead;

-- name: try_generation_lock
-- Hold a generation's lock: waiters that read this generation sleep on it.
SELECT pg_try_advisory_lock(indexsync.generation_key(%(index)s, %(generation)s));

-- name: generation_unlock
-- Let go of a generation's lock: its waiters wake.
SELECT pg_advisory_unlock(indexsync.generation_key(%(index)s, %(generation)s));

-- name: lead_unlock
-- Stop leading an index's refreshes.
SELECT pg_advisory_unlock(indexsync.lead_key(%(index)s));

-- name: pending_floors
-- The smallest seq (or origin, for a re-queued change) still queued for each index, or NULL
-- when none is: every change below it has been written. Read in a snapshot taken after the
-- sequence's value that bounds the horizon (see migration 4).
SELECT i AS index_name, least(
    (SELECT o.seq FROM indexsync.outbox o WHERE o.index_name = i ORDER BY o.seq LIMIT 1),
    (SELECT min(o.origin) FROM indexsync.outbox o WHERE o.index_name = i AND o.origin IS NOT NULL)
) AS floor
FROM unnest(%(indexes)s::text[]) AS i;

-- name: publish_searchable
-- An index is searchable up to `horizon`, in a new generation (whose lock the publisher
-- already holds). The horizon never goes back: several workers may publish in turn.
UPDATE indexsync.searchable
SET horizon = greatest(horizon, %(horizon)s), generation = %(generation)s, refreshed_at = now()
WHERE index_name = %(index)s;

-- name: searchable
-- How far each index is searchable, and when a worker last refreshed it for its waiters.
SELECT index_name, horizon, generation, refreshed_at FROM indexsync.searchable;

-- name: wait_for_search
-- Wait until every change of the index committed before now is searchable (migration 4).
SELECT indexsync.wait_for_search(%(index)s, make_interval(secs => %(timeout)s));

-- === pauses an operator asks for ==========================================================

-- name: hold
-- `indexsync pause`: no worker claims this index's changes from the next claim on.
INSERT INTO indexsync.binding_state AS b (index_name, held_reason, held_at, held_by)
VALUES (%(index)s, %(reason)s, now(), %(by)s)
ON CONFLICT (index_name) DO UPDATE
SET held_reason = EXCLUDED.held_reason, held_by = EXCLUDED.held_by, updated_at = now(),
    held_at = coalesce(b.held_at, now());

-- name: release
-- `indexsync resume`: the index syncs again; returns whether it was paused.
UPDATE indexsync.binding_state
SET held_reason = NULL, held_at = NULL, held_by = NULL, updated_at = now()
WHERE index_name = %(index)s AND held_at IS NOT NULL
RETURNING index_name;

-- name: held_indexes
-- Every index an operator paused.
SELECT index_name FROM indexsync.binding_state WHERE held_at IS NOT NULL;

-- name: backfill_running
-- Whether a worker is writing an index's existing rows right now (it holds the lock).
SELECT EXISTS (
    SELECT FROM pg_catalog.pg_locks
    WHERE locktype = 'advisory' AND objsubid = 2 AND granted
      AND classid = hashtext('indexsync.backfill')::oid AND objid = hashtext(%(alias)s)::oid
);

-- name: queued_changes
-- How many changes wait for one index.
SELECT count(*) FROM indexsync.outbox WHERE index_name = %(index)s;
