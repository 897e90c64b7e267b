-- Migration 4: read-your-writes. An application waits, in SQL, until the changes committed
-- before its call are searchable: `SELECT indexsync.wait_for_search('articles', '5 s')`.
--
-- The model (docs/design.md, "Read-your-writes"): a waiter draws T, the sequence's value
-- when it calls; every change committed before the call has a seq at or below T. A worker
-- that refreshes an index for its waiters first reads the sequence (L), then, in a later
-- snapshot, the smallest seq still queued for the index (m), refreshes it, and publishes
-- the horizon min(L, m - 1): every change at or below it was written before the refresh
-- began. A waiter is answered once the horizon reaches T.

-- A change put back in the outbox (refused for too long, a blocked index, a broken binding)
-- gets a new seq; `origin` keeps the seq it was first recorded with, so a waiter's change
-- never looks written because it was re-queued. NULL for a change recorded once.
ALTER TABLE indexsync.outbox ADD COLUMN origin bigint;
-- Only re-queued rows carry an origin: the triggers' inserts never touch this index.
CREATE INDEX outbox_origin ON indexsync.outbox (index_name, origin) WHERE origin IS NOT NULL;

-- The seqs of the changes a dead letter stands for, so that a waiter can tell whether one
-- of the changes it waits for was dead-lettered (NULL for letters made before this).
ALTER TABLE indexsync.dead_letters ADD COLUMN first_change bigint, ADD COLUMN last_change bigint;

-- How far each index is searchable, as the worker that refreshes it for its waiters
-- publishes it. `generation` names the advisory lock that worker holds until it publishes
-- again: waiters sleep on that lock, so a thousand waiters cost PostgreSQL no polling.
CREATE TABLE indexsync.searchable (
    index_name text PRIMARY KEY,
    horizon bigint NOT NULL DEFAULT 0,
    generation bigint NOT NULL DEFAULT 0,
    refreshed_at timestamptz
);

-- The advisory locks of the protocol. A waiter holds (wait_key(index), its seq's low 31
-- bits) shared while it waits: workers find the indexes that have waiters, and the
-- smallest seq they wait for, in pg_locks (a lock, unlike a row or a NOTIFY, is seen before
-- the waiter's transaction commits), and refresh and wake only when a waiter can be
-- answered. One worker per index holds lead_key(index) and the current generation's lock.
CREATE FUNCTION indexsync.wait_key(index_name text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT pg_catalog.hashtext('indexsync.wait:' OPERATOR(pg_catalog.||) $1) $$;

CREATE FUNCTION indexsync.lead_key(index_name text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT pg_catalog.hashtext('indexsync.lead:' OPERATOR(pg_catalog.||) $1) $$;

CREATE FUNCTION indexsync.generation_key(index_name text, generation bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (pg_catalog.hashtext('indexsync.generation:' OPERATOR(pg_catalog.||) $1)::bigint
              OPERATOR(pg_catalog.<<) 32)
             OPERATOR(pg_catalog.|) ($2 OPERATOR(pg_catalog.&) 4294967295) $$;

-- True once every change to `index_name` committed before the call is searchable: written,
-- and visible to a search after a refresh. False when `timeout` passes first, or when one
-- of the changes this session committed (in its latest writing transaction), or that were
-- still queued when the call began, was dead-lettered; a WARNING then says why. It never
-- raises for a timeout.
CREATE FUNCTION indexsync.wait_for_search(index_name text, timeout interval DEFAULT '5 s')
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
-- A SET clause keeps lock_timeout's changes inside this call, and fixes the search path of
-- a function that runs with its owner's rights.
SET search_path = pg_catalog, pg_temp
SET lock_timeout = 0
AS $$
DECLARE
    index_ alias FOR index_name;
    target bigint;
    since bigint;
    start_horizon bigint;
    horizon_ bigint;
    generation_ bigint;
    seen bigint;
    deadline timestamptz := clock_timestamp() + timeout;
    left_ms bigint;
    granted boolean;
    nap float8 := 0.005;
    oldest float8;
    paused text;
    alive integer;
    letters integer;
    sample text;
    why text;
BEGIN
    IF index_ IS NULL OR timeout IS NULL THEN
        RAISE EXCEPTION 'indexsync.wait_for_search: index_name and timeout must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        -- Its snapshot would never show the horizon move.
        RAISE EXCEPTION 'indexsync.wait_for_search(%): cannot wait inside a % transaction',
            index_, upper(current_setting('transaction_isolation'))
            USING ERRCODE = 'invalid_transaction_state',
                  HINT = 'Call it after COMMIT, in autocommit or a READ COMMITTED transaction.';
    END IF;
    IF current_setting('indexsync.write_xact', true) = pg_current_xact_id_if_assigned()::text THEN
        RAISE EXCEPTION 'indexsync.wait_for_search(%): this transaction''s own changes are not committed yet',
            index_
            USING ERRCODE = 'invalid_transaction_state',
                  HINT = 'Call it after COMMIT: only committed changes can be searchable.';
    END IF;
    IF NOT EXISTS (SELECT FROM indexsync.bindings b WHERE b.index_name = index_) THEN
        RAISE EXCEPTION 'indexsync.wait_for_search(%): no binding is installed for this index', index_
            USING ERRCODE = 'undefined_object',
                  HINT = 'Pass the alias of an index of the bindings file, as installed.';
    END IF;

    -- Every change committed before this call has a seq at or below the sequence's value now.
    SELECT s.last_value INTO target FROM indexsync.change_seq s;
    SELECT s.horizon INTO start_horizon FROM indexsync.searchable s WHERE s.index_name = index_;
    start_horizon := coalesce(start_horizon, 0);
    -- The capture triggers record where this session's latest writing transaction began.
    since := least(coalesce(nullif(current_setting('indexsync.write_from', true), '')::bigint,
                            start_horizon), start_horizon);

    PERFORM pg_advisory_lock_shared(indexsync.wait_key(index_), (target & 2147483647)::integer);
    BEGIN
        LOOP
            SELECT s.horizon, s.generation INTO horizon_, generation_
            FROM indexsync.searchable s WHERE s.index_name = index_;
            EXIT WHEN coalesce(horizon_, 0) >= target;
            left_ms := (extract(epoch FROM deadline - clock_timestamp()) * 1000)::bigint;
            EXIT WHEN left_ms <= 0;
            -- Sleep until the worker that leads this index's refreshes publishes again: it
            -- holds this generation's lock until then.
            PERFORM set_config('lock_timeout', greatest(left_ms, 1)::text, true);
            BEGIN
                PERFORM pg_advisory_lock_shared(
                    indexsync.generation_key(index_, coalesce(generation_, 0)));
                granted := true;
            EXCEPTION WHEN lock_not_available THEN
                granted := false;
            END;
            PERFORM set_config('lock_timeout', '0', true);
            IF granted THEN
                PERFORM pg_advisory_unlock_shared(
                    indexsync.generation_key(index_, coalesce(generation_, 0)));
                SELECT s.generation INTO seen FROM indexsync.searchable s
                WHERE s.index_name = index_;
                IF seen IS NOT DISTINCT FROM generation_ THEN
                    -- Nobody held it: no worker leads this index yet (none has noticed a
                    -- waiter, or the one that did has died). Nap, briefly, until one does.
                    PERFORM pg_sleep(least(nap, greatest(left_ms, 1) / 1000.0));
                    nap := least(nap * 2, 0.2);
                ELSE
                    nap := 0.005;
                END IF;
            END IF;
        END LOOP;
    EXCEPTION WHEN query_canceled OR others THEN
        -- A session-level lock outlives an error: let go of it before passing the error on.
        PERFORM pg_advisory_unlock_shared(indexsync.wait_key(index_), (target & 2147483647)::integer);
        RAISE;
    END;
    PERFORM pg_advisory_unlock_shared(indexsync.wait_key(index_), (target & 2147483647)::integer);

    IF coalesce(horizon_, 0) < target THEN
        -- Cheap on any backlog (the head of the queue, by its primary key): a timed-out
        -- waiter must not cost PostgreSQL a scan of the outbox.
        SELECT extract(epoch FROM now() - o.created_at) INTO oldest
        FROM indexsync.outbox o WHERE o.index_name = index_ ORDER BY o.seq LIMIT 1;
        SELECT coalesce('paused by an operator: ' OPERATOR(pg_catalog.||) b.held_reason,
                        b.paused_reason)
        INTO paused FROM indexsync.binding_state b WHERE b.index_name = index_;
        SELECT count(*) INTO alive FROM indexsync.workers w
        WHERE w.seen_at > now() - interval '30 s';
        why := CASE
            WHEN paused IS NOT NULL THEN format('the index is %s', paused)
            WHEN alive = 0 THEN 'no indexsync worker has been alive in the last 30 s'
            WHEN oldest IS NOT NULL THEN format(
                'changes committed before the call still wait to be written (the oldest '
                'queued change is %s s old)', round(oldest::numeric, 1))
            ELSE 'the changes are written; no worker has refreshed the index for its waiters yet'
        END;
        RAISE WARNING 'indexsync.wait_for_search(%): not searchable after %: %', index_, timeout, why
            USING DETAIL = format('waiting for seq %s; searchable up to %s', target, coalesce(horizon_, 0));
        RETURN false;
    END IF;

    SELECT count(*), min(d.doc_id) INTO letters, sample
    FROM indexsync.dead_letters d
    WHERE d.index_name = index_ AND d.last_change >= since AND d.first_change <= target;
    IF letters > 0 THEN
        RAISE WARNING 'indexsync.wait_for_search(%): % document(s) were dead-lettered and are not searchable (for example id %)',
            index_, letters, sample
            USING HINT = 'See `indexsync deadletters`; mend the row, then `indexsync deadletters retry`.';
        RETURN false;
    END IF;
    RETURN true;
END
$$;

-- Pauses an operator asks for (`indexsync pause ALIAS`), apart from those a worker makes on
-- its own when a binding breaks or an index refuses writes (`paused_reason`): no worker
-- claims a change of a held index, its changes stay queued, and it is no failure.
ALTER TABLE indexsync.binding_state
    ADD COLUMN held_reason text,
    ADD COLUMN held_at timestamptz,
    ADD COLUMN held_by text;

-- Routed indexes (a binding's `routing`): the capture trigger records, with a change that
-- moves a document to another routing or deletes it, the routing it had; the worker deletes
-- the copy there. NULL for every other change.
ALTER TABLE indexsync.outbox ADD COLUMN routing text;
