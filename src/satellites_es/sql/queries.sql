-- SQL of the event log, in named blocks (loaded by satellites_es.sql).
--
-- Blocks used at run time name the schema as {schema}: the store substitutes the validated,
-- quoted schema name once (identifiers cannot be bind parameters). Blocks used by migrations
-- carry a version suffix and are never edited once released: a change is a new block and a new
-- migration, so an old migration still creates what it created.

-- name: create_append_events_v1
-- The one-round-trip append: lock, dedupe, version, insert and notify in one call.
--
-- Gap safety. A reader follows the log with "position > cursor". With a bigserial, position N+1
-- can commit before N (each transaction takes its number at insert time but becomes visible at
-- commit), so a reader that has passed N+1 never sees N. Here every append first takes
-- LOCK TABLE events IN EXCLUSIVE MODE, held until the appending transaction ends, and only then
-- picks its positions (max(position) + 1, ...). Appends are therefore serialised: position order
-- is commit order, a reader's cursor can never pass an uncommitted position, and per-key
-- version order is position order. Positions are even dense: a rolled-back append leaves no
-- hole because the next append reuses its numbers (nobody could have seen them).
--
-- The trade-off: the lock is held to the end of the caller's transaction. A producer that
-- appends early and then keeps its transaction open delays every other appender for that long
-- (append last, commit soon). Readers are never blocked: EXCLUSIVE mode does not conflict with
-- the ACCESS SHARE lock a SELECT takes. Throughput is bounded by one appending transaction at a
-- time, which batching makes up for (one call stores a whole batch).
--
-- Under REPEATABLE READ or SERIALIZABLE the caller's snapshot may predate the lock; the
-- version and position constraints then reject the stale append (unique violation) instead of
-- skipping anything. Producers should append in READ COMMITTED, the default.
CREATE FUNCTION append_events_v1(
    ids text[], resources text[], keys text[], types text[], sources text[], payloads jsonb[],
    timestamps timestamptz[], stream_of integer[], seqs integer[], firsts integer[],
    expected integer, channel text
)
RETURNS TABLE (out_position bigint, out_id text, out_version integer, out_duplicate boolean)
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $fn$
-- The caller numbers the batch (ids distinct; events in order): stream_of[i] is the 1-based
-- index of event i's (resource, key) stream among the batch's distinct streams, seqs[i] its
-- 1-based rank within that stream, firsts[s] the index of stream s's first event. So the
-- server takes one version lookup per stream (not per event) and needs no sort or window.
--
-- Optimistic path: every event is new (the usual case). Each gets position base + i and version
-- head(stream) + seq, and the insert runs in a block that catches unique_violation: the unique
-- indexes the insert probes anyway are the id check, so no per-event lookup is needed. If an id
-- was stored already, the block's subtransaction undoes that insert and the careful path below
-- looks each id up, reports the stored ones and numbers the rest again (dense, contiguous).
-- A stale REPEATABLE READ snapshot fails the careful path's insert too, and that unique
-- violation propagates to the caller as before.
DECLARE
    base bigint;
    heads integer[];
    top bigint;
BEGIN
    LOCK TABLE events IN EXCLUSIVE MODE;
    SELECT coalesce(max(e.position), 0) INTO base FROM events e;

    -- Every lookup below is a scalar or LATERAL ... LIMIT 1 subquery: the planner cannot turn
    -- it into a hash join that scans the whole log (it guesses the number of input rows, whatever
    -- the batch), so an append costs index probes, not a pass over millions of events.
    SELECT array_agg(
               (SELECT coalesce(max(e.version), 0) FROM events e
                WHERE e.resource = resources[f.first] AND e.key = keys[f.first])
               ORDER BY f.n)
    INTO heads
    FROM unnest(firsts) WITH ORDINALITY AS f(first, n);

    -- With expected_version (one stream, so heads has one element) a batch whose events are all
    -- stored already is a retry, reported as duplicates, not a conflict.
    IF expected IS NOT NULL AND heads[1] <> expected AND EXISTS (
        SELECT 1 FROM unnest(ids) AS b(id)
        WHERE (SELECT e.position FROM events e WHERE e.id = b.id LIMIT 1) IS NULL
    ) THEN
        RAISE EXCEPTION 'stream version conflict'
            USING ERRCODE = 'SAT01', DETAIL = heads[1]::text;
    END IF;

    BEGIN
        INSERT INTO events AS e
            (position, id, resource, key, version, type, source, payload, "timestamp")
        SELECT base + x.ord, x.id, x.resource, x.key, heads[x.s] + x.seq, x.type, x.source,
               x.payload, x."timestamp"
        FROM unnest(ids, resources, keys, types, sources, payloads, timestamps, stream_of,
                    seqs)
             WITH ORDINALITY
             AS x(id, resource, key, type, source, payload, "timestamp", s, seq, ord);
        RETURN QUERY
        SELECT base + x.ord, x.id, heads[x.s] + x.seq, false
        FROM unnest(ids, stream_of, seqs) WITH ORDINALITY AS x(id, s, seq, ord);
        PERFORM pg_notify(channel, (base + cardinality(ids))::text);
        RETURN;
    EXCEPTION WHEN unique_violation THEN
        NULL;
    END;

    -- Careful path: some ids were stored already.
    RETURN QUERY
    WITH input AS (
        SELECT x.*, d.position AS stored_position, d.version AS stored_version
        FROM unnest(ids, resources, keys, types, sources, payloads, timestamps)
             WITH ORDINALITY AS x(id, resource, key, type, source, payload, "timestamp", ord)
        LEFT JOIN LATERAL (
            SELECT e.position, e.version FROM events e WHERE e.id = x.id LIMIT 1
        ) d ON true
    ),
    numbered AS (
        SELECT i.*,
               base + row_number() OVER (ORDER BY i.ord) AS new_position,
               (SELECT coalesce(max(e.version), 0) FROM events e
                WHERE e.resource = i.resource AND e.key = i.key)
               + row_number() OVER (PARTITION BY i.resource, i.key ORDER BY i.ord)
                 AS new_version
        FROM input i
        WHERE i.stored_position IS NULL
    ),
    inserted AS (
        INSERT INTO events AS e
            (position, id, resource, key, version, type, source, payload, "timestamp")
        SELECT n.new_position, n.id, n.resource, n.key, n.new_version::integer, n.type,
               n.source, n.payload, n."timestamp"
        FROM numbered n
        RETURNING e.position, e.id, e.version
    )
    SELECT i.position, i.id, i.version, false FROM inserted i
    UNION ALL
    SELECT i.stored_position, i.id, i.stored_version, true
    FROM input i
    WHERE i.stored_position IS NOT NULL;

    SELECT max(e.position) INTO top FROM events e;
    IF top > base THEN
        PERFORM pg_notify(channel, top::text);
    END IF;
END
$fn$;

-- name: drop_append_events_v1
DROP FUNCTION append_events_v1(
    text[], text[], text[], text[], text[], jsonb[], timestamptz[], integer[], integer[],
    integer[], integer, text
);

-- name: create_append_event_v1
-- The same for one event, with scalar arguments: no JSON array to unpack, no sorts or window
-- functions, a handful of index probes. Single-event appends are the common case and their
-- latency is what a producer waits for. Same lock, same rules as append_events_v1.
CREATE FUNCTION append_event_v1(
    new_id text, new_resource text, new_key text, new_type text, new_source text,
    new_payload jsonb, new_timestamp timestamptz, expected integer, channel text
)
RETURNS TABLE (out_position bigint, out_id text, out_version integer, out_duplicate boolean)
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    next_position bigint;
    stream_version integer;
BEGIN
    LOCK TABLE events IN EXCLUSIVE MODE;  -- gap safety: see append_events_v1

    RETURN QUERY SELECT e.position, e.id, e.version, true FROM events e WHERE e.id = new_id;
    IF FOUND THEN
        RETURN;
    END IF;

    SELECT coalesce(max(e.version), 0) INTO stream_version FROM events e
    WHERE e.resource = new_resource AND e.key = new_key;
    IF expected IS NOT NULL AND stream_version <> expected THEN
        RAISE EXCEPTION 'stream version conflict'
            USING ERRCODE = 'SAT01', DETAIL = stream_version::text;
    END IF;
    SELECT coalesce(max(e.position), 0) + 1 INTO next_position FROM events e;

    INSERT INTO events (position, id, resource, key, version, type, source, payload, "timestamp")
    VALUES (next_position, new_id, new_resource, new_key, stream_version + 1, new_type,
            new_source, new_payload, new_timestamp);
    PERFORM pg_notify(channel, next_position::text);
    RETURN QUERY SELECT next_position, new_id, stream_version + 1, false;
END
$fn$;

-- name: drop_append_event_v1
DROP FUNCTION append_event_v1(text, text, text, text, text, jsonb, timestamptz, integer, text);

-- name: definer_search_path
-- Run by a migration before it creates SECURITY DEFINER functions, whose
-- "SET search_path FROM CURRENT" captures it: the log's schema, then pg_temp. Unnamed, pg_temp is
-- searched first, and a caller's temporary table named "events" would stand in for the log.
SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_temp', true);

-- name: create_sequencer_v1
-- Migration 0004: positions are taken after commit (issue 13). See the paragraph below.
--
-- Why. The v1 functions serialised appends with LOCK TABLE events IN EXCLUSIVE MODE held to the
-- end of the producer's transaction: position order was commit order (no reader could skip),
-- but every producer waited for every other, and one that appended and then kept its
-- transaction open stopped them all, and with them the relay and every projection.
--
-- Pending rows. A producer appending inside its own transaction takes no log-wide lock at all.
-- Its events are stored *pending*: position = -nextval('events_pending_seq'), a negative number
-- that no reader ever asks for (readers follow "position > cursor" from 0). Only appends to the
-- same (resource, key) stream wait for each other, on the unique index of (resource, key,
-- version): the second sees the first's uncommitted version, waits for it to end, and takes the
-- next version (or fails its expected_version). So within a stream a later version is always
-- inserted after the earlier one committed, and gets a lower (more negative) pending number.
--
-- The sequencer. sequence_events_v1() gives committed pending rows their real positions: under
-- a transaction-level advisory lock (one sequencer per schema at a time) it reads the head
-- (max position) and numbers the pending rows head + 1, head + 2, ... in insertion order
-- (pending number descending), in one UPDATE, then commits. A reader's snapshot therefore sees a
-- sequencer's batch all at once, and every later batch above it: positions stay dense and
-- monotone in commit order of the sequencer, which is all a reader's cursor relies on. A
-- producer's uncommitted rows are invisible to the sequencer, so a producer holding its
-- transaction open delays only itself: its events are numbered after it commits, above
-- everything read so far. A rolled-back append leaves nothing (its pending rows never commit).
-- Per-stream version order is position order: versions of a stream are inserted in commit
-- order (above), and the sequencer numbers in insertion order.
--
-- Who sequences. Readers do, before they read (EventStore.sequence, called by the relay, the
-- projectors, catch-up and open-ended reads): whichever comes first does the work, the others
-- find nothing pending, and nothing stalls if one dies. The relay's leader also runs it every
-- relay.sequence_interval (10 ms), and the sequencer NOTIFYs the log's listeners when it
-- numbered something. A pending append itself sends no NOTIFY: every transaction that notifies
-- takes one database-wide lock at commit (PreCommit_Notify), which would serialise the commits
-- of all producers again; only holders of the sequencer lock notify, and they are serialised
-- anyway.
--
-- Autocommitted appends (no caller transaction) take a fast path: if the sequencer lock is free
-- (try-lock, never waited for) the append numbers the pending rows and then its own events
-- directly, in the same short statement, so it returns its positions in one round trip and
-- writes each row once. While it holds the lock it never waits on another producer: its insert
-- runs under a 20 ms lock_timeout (the only wait possible is on an in-flight append to the same
-- stream or of the same id), and on timeout it fails with SQLSTATE SAT02 for the client to redo
-- the append as pending. If the lock is busy, the append stores pending rows and the client
-- asks the sequencer for their positions after commit (a second round trip).
--
-- The price: an event appended inside a producer's transaction is written twice (inserted
-- pending, updated by the sequencer) and its position is known only after commit
-- (EventStore.sequenced). Under REPEATABLE READ or SERIALIZABLE a producer's stale snapshot
-- can make the version unique index reject the append (ConcurrencyError): append in READ
-- COMMITTED, the default.
CREATE SEQUENCE events_pending_seq AS bigint;

-- name: create_sequence_pending_v1
CREATE FUNCTION sequence_pending_v1(channel text)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
SET enable_seqscan TO off
SET enable_hashjoin TO off
SET enable_mergejoin TO off
AS $fn$
-- The sequencer's work; the caller holds the sequencer lock. Returns the new head, and wakes
-- the log's listeners on ``channel`` when it numbered something (NULL: the caller will).
-- It runs every few milliseconds, with few rows pending: index probes only. The planner settings
-- above keep it so on a log without statistics (a new table is guessed to hold a third of its
-- rows below zero, and the plan became a hash join over the whole log, its cost growing with
-- the log; BENCHMARKS.md, issue 13).
DECLARE
    base bigint;
    numbered bigint;
BEGIN
    SELECT coalesce(max(e.position), 0) INTO base FROM events e WHERE e.position > 0;
    UPDATE events AS e SET position = base + p.rank
    FROM (SELECT x.position AS pending, row_number() OVER (ORDER BY x.position DESC) AS rank
          FROM events x WHERE x.position < 0) AS p
    WHERE e.position = p.pending;
    GET DIAGNOSTICS numbered = ROW_COUNT;
    IF numbered > 0 AND channel IS NOT NULL THEN
        PERFORM pg_notify(channel, (base + numbered)::text);
    END IF;
    RETURN base + numbered;
END
$fn$;

-- name: create_sequence_events_v1
CREATE FUNCTION sequence_events_v1(channel text)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $fn$
-- Number every committed pending event; returns the head. Waits for a sequencer at work
-- (never for a producer: producers inside their own transactions never take this lock).
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('satellites.sequencer'), hashtext(current_schema()));
    RETURN sequence_pending_v1(channel);
END
$fn$;

-- name: create_sequenced_positions_v1
CREATE FUNCTION sequenced_positions_v1(wanted text[], channel text)
RETURNS TABLE (out_id text, out_position bigint)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $fn$
-- Sequence, then the positions of the events with these ids (NULL: not committed yet).
BEGIN
    PERFORM sequence_events_v1(channel);
    RETURN QUERY
    SELECT e.id, CASE WHEN e.position > 0 THEN e.position END
    FROM events e WHERE e.id = ANY(wanted);
END
$fn$;

-- name: drop_sequenced_positions_v1
DROP FUNCTION sequenced_positions_v1(text[], text);

-- name: drop_sequence_events_v1
DROP FUNCTION sequence_events_v1(text);

-- name: drop_sequence_pending_v1
DROP FUNCTION sequence_pending_v1(text);

-- name: drop_sequencer_v1
DROP SEQUENCE events_pending_seq;

-- name: create_append_events_v2
-- The one-round-trip append without a log-wide lock (migration 0004; the design is in the
-- create_sequencer_v1 paragraph). sequence_now: the caller is not inside a transaction of its
-- own, so the append may take the fast path (number its events at once if the sequencer lock is
-- free). The numbering of the batch by the caller is as in append_events_v1.
--
-- Optimistic path: every event is new; one INSERT, whose unique indexes are the id check. A
-- unique violation (an id stored already, or a version taken by a same-stream append that
-- committed meanwhile) falls to the careful path, which looks each id up, reports the stored
-- ones and versions the rest again from a fresh snapshot; if that collides with yet another
-- same-stream append, the whole attempt is made again (READ COMMITTED only: a stale
-- REPEATABLE READ snapshot would collide forever, so there the violation is raised). On the
-- fast path every attempt first numbers what became pending meanwhile: a same-stream append
-- that committed while we waited for it must be numbered before our next version.
--
-- Pending numbers follow the batch order (nextval in the scan of the batch), but pending rows
-- are inserted in (resource, key) order: two batches that share streams then wait for each
-- other's versions in one order and cannot deadlock. (The fast path needs no such order: a wait
-- of its own ends in its lock_timeout.) (Separate appends inside one producer transaction
-- still can, like any two transactions writing rows in opposite orders; Postgres then aborts
-- one and the caller gets ConcurrencyError: retry the transaction.)
CREATE FUNCTION append_events_v2(
    ids text[], resources text[], keys text[], types text[], sources text[], payloads jsonb[],
    timestamps timestamptz[], stream_of integer[], seqs integer[], firsts integer[],
    expected integer, channel text, sequence_now boolean
)
RETURNS TABLE (out_position bigint, out_id text, out_version integer, out_duplicate boolean)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $fn$
DECLARE
    locked boolean := false;  -- the fast path: we hold the sequencer lock
    base bigint;  -- NULL: pending (numbered after commit); else numbered from base + 1 now
    heads integer[];
    r_position bigint[];
    r_id text[];
    r_version integer[];
    r_duplicate boolean[];
    may_retry boolean := current_setting('transaction_isolation') = 'read committed';
BEGIN
    IF sequence_now
       AND pg_try_advisory_xact_lock(hashtext('satellites.sequencer'), hashtext(current_schema()))
    THEN
        locked := true;
        PERFORM set_config('lock_timeout', '20ms', true);  -- never wait long holding the lock
    END IF;

    LOOP
        -- One version lookup per stream, as scalar subqueries (index probes, never a scan).
        SELECT array_agg(
                   (SELECT coalesce(max(e.version), 0) FROM events e
                    WHERE e.resource = resources[f.first] AND e.key = keys[f.first])
                   ORDER BY f.n)
        INTO heads
        FROM unnest(firsts) WITH ORDINALITY AS f(first, n);

        IF expected IS NOT NULL AND heads[1] <> expected AND EXISTS (
            SELECT 1 FROM unnest(ids) AS b(id)
            WHERE (SELECT e.position FROM events e WHERE e.id = b.id LIMIT 1) IS NULL
        ) THEN
            RAISE EXCEPTION 'stream version conflict'
                USING ERRCODE = 'SAT01', DETAIL = heads[1]::text;
        END IF;

        -- The fast path numbers what is pending only now, after the version lookup: a
        -- same-stream append that committed after the lookup took the version we are about
        -- to insert (we collide with it and go round again), and one that committed before it
        -- is numbered here, below us.
        IF locked THEN
            base := sequence_pending_v1(NULL);
        END IF;

        BEGIN
            IF base IS NOT NULL THEN
                -- Fast path: positions base + 1, ... in batch order; inserted in batch order (a
                -- wait on another producer here ends in lock_timeout, never in a deadlock).
                INSERT INTO events AS e
                    (position, id, resource, key, version, type, source, payload, "timestamp")
                SELECT base + x.ord, x.id, x.resource, x.key, heads[x.s] + x.seq, x.type,
                       x.source, x.payload, x."timestamp"
                FROM unnest(ids, resources, keys, types, sources, payloads, timestamps,
                            stream_of, seqs)
                     WITH ORDINALITY
                     AS x(id, resource, key, type, source, payload, "timestamp", s, seq, ord);
                SELECT array_agg(base + x.ord ORDER BY x.ord), ids,
                       array_agg(heads[x.s] + x.seq ORDER BY x.ord),
                       array_fill(false, ARRAY[cardinality(ids)])
                INTO r_position, r_id, r_version, r_duplicate
                FROM unnest(stream_of, seqs) WITH ORDINALITY AS x(s, seq, ord);
            ELSE
                -- Pending: numbers in batch order, rows inserted in (resource, key) order.
                WITH input AS MATERIALIZED (
                    SELECT x.*, -nextval('events_pending_seq') AS new_position
                    FROM unnest(ids, resources, keys, types, sources, payloads, timestamps,
                                stream_of, seqs)
                         WITH ORDINALITY
                         AS x(id, resource, key, type, source, payload, "timestamp", s, seq, ord)
                ),
                inserted AS (
                    INSERT INTO events AS e
                        (position, id, resource, key, version, type, source, payload,
                         "timestamp")
                    SELECT i.new_position, i.id, i.resource, i.key, heads[i.s] + i.seq, i.type,
                           i.source, i.payload, i."timestamp"
                    FROM input i
                    ORDER BY i.resource, i.key, i.seq
                )
                SELECT array_agg(i.new_position ORDER BY i.ord), ids,
                       array_agg(heads[i.s] + i.seq ORDER BY i.ord),
                       array_fill(false, ARRAY[cardinality(ids)])
                INTO r_position, r_id, r_version, r_duplicate
                FROM input i;
            END IF;
            EXIT;
        EXCEPTION WHEN unique_violation THEN
            NULL;
        END;

        -- Careful path: some ids were stored already (reported, the rest numbered again from
        -- the same heads); a version taken meanwhile collides again and we go round.
        BEGIN
            WITH input AS MATERIALIZED (
                SELECT x.*, d.position AS stored_position, d.version AS stored_version,
                       CASE WHEN d.position IS NULL AND base IS NULL
                            THEN -nextval('events_pending_seq') END AS pending_position
                FROM unnest(ids, resources, keys, types, sources, payloads, timestamps,
                            stream_of)
                     WITH ORDINALITY
                     AS x(id, resource, key, type, source, payload, "timestamp", s, ord)
                LEFT JOIN LATERAL (
                    SELECT e.position, e.version FROM events e WHERE e.id = x.id LIMIT 1
                ) d ON true
            ),
            numbered AS (
                SELECT i.*,
                       coalesce(base + row_number() OVER (ORDER BY i.ord), i.pending_position)
                         AS new_position,
                       heads[i.s] + row_number() OVER (PARTITION BY i.s ORDER BY i.ord)
                         AS new_version
                FROM input i
                WHERE i.stored_position IS NULL
            ),
            inserted AS (
                INSERT INTO events AS e
                    (position, id, resource, key, version, type, source, payload, "timestamp")
                SELECT n.new_position, n.id, n.resource, n.key, n.new_version::integer, n.type,
                       n.source, n.payload, n."timestamp"
                FROM numbered n
                ORDER BY n.resource, n.key, n.ord
                RETURNING e.position, e.id, e.version
            ),
            answer AS (
                SELECT i.position, i.id, i.version, false AS duplicate FROM inserted i
                UNION ALL
                SELECT i.stored_position, i.id, i.stored_version, true
                FROM input i
                WHERE i.stored_position IS NOT NULL
            )
            SELECT array_agg(a.position), array_agg(a.id), array_agg(a.version),
                   array_agg(a.duplicate)
            INTO r_position, r_id, r_version, r_duplicate
            FROM answer a;
            EXIT;
        EXCEPTION WHEN unique_violation THEN
            IF NOT may_retry THEN
                RAISE;
            END IF;
        END;
    END LOOP;

    -- Only the fast path wakes the listeners: it holds the sequencer lock, so its NOTIFY adds
    -- no contention. A pending append must not notify: every transaction that notifies takes
    -- one database-wide lock at commit (PreCommit_Notify), which would serialise the commits
    -- of all producers again. Its events are announced by the sequencer that numbers them.
    IF locked THEN
        PERFORM pg_notify(channel, base::text);
    END IF;
    RETURN QUERY
    SELECT * FROM unnest(r_position, r_id, r_version, r_duplicate);
END
$fn$;

-- name: drop_append_events_v2
DROP FUNCTION append_events_v2(
    text[], text[], text[], text[], text[], jsonb[], timestamptz[], integer[], integer[],
    integer[], integer, text, boolean
);

-- name: create_append_event_v2
-- The same for one event, with scalar arguments (the latency-sensitive common case).
CREATE FUNCTION append_event_v2(
    new_id text, new_resource text, new_key text, new_type text, new_source text,
    new_payload jsonb, new_timestamp timestamptz, expected integer, channel text,
    sequence_now boolean
)
RETURNS TABLE (out_position bigint, out_id text, out_version integer, out_duplicate boolean)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $fn$
DECLARE
    locked boolean := false;  -- the fast path: we hold the sequencer lock
    stream_version integer;
    new_position bigint;
    may_retry boolean := current_setting('transaction_isolation') = 'read committed';
BEGIN
    IF sequence_now
       AND pg_try_advisory_xact_lock(hashtext('satellites.sequencer'), hashtext(current_schema()))
    THEN
        locked := true;
        PERFORM set_config('lock_timeout', '20ms', true);  -- never wait long holding the lock
    END IF;

    -- Insert first (a new event is the usual case): the unique indexes are the id check. Only
    -- when nothing was inserted, or expected_version does not match, is the id looked up: a
    -- retry of a stored event is reported as a duplicate, not as a conflict.
    LOOP
        SELECT coalesce(max(e.version), 0) INTO stream_version FROM events e
        WHERE e.resource = new_resource AND e.key = new_key;
        IF expected IS NULL OR stream_version = expected THEN
            IF locked THEN  -- numbered after the version lookup: see append_events_v2
                new_position := sequence_pending_v1(NULL) + 1;
            ELSE
                new_position := -nextval('events_pending_seq');
            END IF;
            -- ON CONFLICT DO NOTHING, not an exception block: no subtransaction (a producer
            -- appending many times in one transaction would pile them up). It waits for an
            -- in-flight append of the same id or stream version; if that one commits, nothing
            -- is inserted here.
            INSERT INTO events
                (position, id, resource, key, version, type, source, payload, "timestamp")
            VALUES (new_position, new_id, new_resource, new_key, stream_version + 1, new_type,
                    new_source, new_payload, new_timestamp)
            ON CONFLICT DO NOTHING;
            EXIT WHEN FOUND;
        END IF;

        RETURN QUERY
        SELECT CASE WHEN e.position > 0 THEN e.position END, e.id, e.version, true
        FROM events e WHERE e.id = new_id;
        IF FOUND THEN
            IF locked THEN  -- this or an earlier round may have numbered pending events
                PERFORM pg_notify(channel, '0');
            END IF;
            RETURN;
        END IF;
        IF expected IS NOT NULL AND stream_version <> expected THEN
            RAISE EXCEPTION 'stream version conflict'
                USING ERRCODE = 'SAT01', DETAIL = stream_version::text;
        END IF;
        IF NOT may_retry THEN  -- the version was taken by an append our snapshot cannot see
            RAISE EXCEPTION 'stream version conflict' USING ERRCODE = 'unique_violation';
        END IF;
    END LOOP;

    IF locked THEN  -- a pending append must not notify: see append_events_v2
        PERFORM pg_notify(channel, new_position::text);
    END IF;
    -- The output row from variables (RETURN NEXT), not a query: the common path runs one
    -- lookup and one insert, nothing else.
    out_position := CASE WHEN new_position > 0 THEN new_position END;
    out_id := new_id;
    out_version := stream_version + 1;
    out_duplicate := false;
    RETURN NEXT;
END
$fn$;

-- name: drop_append_event_v2
DROP FUNCTION append_event_v2(
    text, text, text, text, text, jsonb, timestamptz, integer, text, boolean
);

-- name: revoke_functions_v2
-- The log's functions run as their owner (SECURITY DEFINER): a role that may append needs
-- EXECUTE on them and no privilege on the tables. Nobody but the owner has EXECUTE until it is
-- granted. (One statement: migrations run each block as one prepared statement.)
REVOKE ALL ON FUNCTION
    append_events_v2(text[], text[], text[], text[], text[], jsonb[], timestamptz[],
                     integer[], integer[], integer[], integer, text, boolean),
    append_event_v2(text, text, text, text, text, jsonb, timestamptz, integer, text, boolean),
    sequence_pending_v1(text), sequence_events_v1(text), sequenced_positions_v1(text[], text)
FROM PUBLIC;

-- name: create_append_events_v3
-- append_events_v2 with each event's metadata (migration 0005, issue 17): correlation and
-- causation ids, actor, W3C trace context, schema version and free headers, one jsonb per event
-- ('{}' when it has none), stored in the metadata column. Nothing else changes: the fast path,
-- the pending path, the retry loop and the notify rules are v2's (see the comment above
-- create_append_events_v2, which holds for this function word for word).
CREATE FUNCTION append_events_v3(
    ids text[], resources text[], keys text[], types text[], sources text[], payloads jsonb[],
    timestamps timestamptz[], metadatas jsonb[], stream_of integer[], seqs integer[], firsts integer[],
    expected integer, channel text, sequence_now boolean
)
RETURNS TABLE (out_position bigint, out_id text, out_version integer, out_duplicate boolean)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $fn$
DECLARE
    locked boolean := false;  -- the fast path: we hold the sequencer lock
    base bigint;  -- NULL: pending (numbered after commit); else numbered from base + 1 now
    heads integer[];
    r_position bigint[];
    r_id text[];
    r_version integer[];
    r_duplicate boolean[];
    may_retry boolean := current_setting('transaction_isolation') = 'read committed';
BEGIN
    IF sequence_now
       AND pg_try_advisory_xact_lock(hashtext('satellites.sequencer'), hashtext(current_schema()))
    THEN
        locked := true;
        PERFORM set_config('lock_timeout', '20ms', true);  -- never wait long holding the lock
    END IF;

    LOOP
        -- One version lookup per stream, as scalar subqueries (index probes, never a scan).
        SELECT array_agg(
                   (SELECT coalesce(max(e.version), 0) FROM events e
                    WHERE e.resource = resources[f.first] AND e.key = keys[f.first])
                   ORDER BY f.n)
        INTO heads
        FROM unnest(firsts) WITH ORDINALITY AS f(first, n);

        IF expected IS NOT NULL AND heads[1] <> expected AND EXISTS (
            SELECT 1 FROM unnest(ids) AS b(id)
            WHERE (SELECT e.position FROM events e WHERE e.id = b.id LIMIT 1) IS NULL
        ) THEN
            RAISE EXCEPTION 'stream version conflict'
                USING ERRCODE = 'SAT01', DETAIL = heads[1]::text;
        END IF;

        -- The fast path numbers what is pending only now, after the version lookup: a
        -- same-stream append that committed after the lookup took the version we are about
        -- to insert (we collide with it and go round again), and one that committed before it
        -- is numbered here, below us.
        IF locked THEN
            base := sequence_pending_v1(NULL);
        END IF;

        BEGIN
            IF base IS NOT NULL THEN
                -- Fast path: positions base + 1, ... in batch order; inserted in batch order (a
                -- wait on another producer here ends in lock_timeout, never in a deadlock).
                INSERT INTO events AS e
                    (position, id, resource, key, version, type, source, payload, "timestamp",
                     metadata)
                SELECT base + x.ord, x.id, x.resource, x.key, heads[x.s] + x.seq, x.type,
                       x.source, x.payload, x."timestamp", x.metadata
                FROM unnest(ids, resources, keys, types, sources, payloads, timestamps, metadatas,
                            stream_of, seqs)
                     WITH ORDINALITY
                     AS x(id, resource, key, type, source, payload, "timestamp", metadata, s, seq, ord);
                SELECT array_agg(base + x.ord ORDER BY x.ord), ids,
                       array_agg(heads[x.s] + x.seq ORDER BY x.ord),
                       array_fill(false, ARRAY[cardinality(ids)])
                INTO r_position, r_id, r_version, r_duplicate
                FROM unnest(stream_of, seqs) WITH ORDINALITY AS x(s, seq, ord);
            ELSE
                -- Pending: numbers in batch order, rows inserted in (resource, key) order.
                WITH input AS MATERIALIZED (
                    SELECT x.*, -nextval('events_pending_seq') AS new_position
                    FROM unnest(ids, resources, keys, types, sources, payloads, timestamps, metadatas,
                                stream_of, seqs)
                         WITH ORDINALITY
                         AS x(id, resource, key, type, source, payload, "timestamp", metadata, s, seq, ord)
                ),
                inserted AS (
                    INSERT INTO events AS e
                        (position, id, resource, key, version, type, source, payload,
                         "timestamp", metadata)
                    SELECT i.new_position, i.id, i.resource, i.key, heads[i.s] + i.seq, i.type,
                           i.source, i.payload, i."timestamp", i.metadata
                    FROM input i
                    ORDER BY i.resource, i.key, i.seq
                )
                SELECT array_agg(i.new_position ORDER BY i.ord), ids,
                       array_agg(heads[i.s] + i.seq ORDER BY i.ord),
                       array_fill(false, ARRAY[cardinality(ids)])
                INTO r_position, r_id, r_version, r_duplicate
                FROM input i;
            END IF;
            EXIT;
        EXCEPTION WHEN unique_violation THEN
            NULL;
        END;

        -- Careful path: some ids were stored already (reported, the rest numbered again from
        -- the same heads); a version taken meanwhile collides again and we go round.
        BEGIN
            WITH input AS MATERIALIZED (
                SELECT x.*, d.position AS stored_position, d.version AS stored_version,
                       CASE WHEN d.position IS NULL AND base IS NULL
                            THEN -nextval('events_pending_seq') END AS pending_position
                FROM unnest(ids, resources, keys, types, sources, payloads, timestamps, metadatas,
                            stream_of)
                     WITH ORDINALITY
                     AS x(id, resource, key, type, source, payload, "timestamp", metadata, s, ord)
                LEFT JOIN LATERAL (
                    SELECT e.position, e.version FROM events e WHERE e.id = x.id LIMIT 1
                ) d ON true
            ),
            numbered AS (
                SELECT i.*,
                       coalesce(base + row_number() OVER (ORDER BY i.ord), i.pending_position)
                         AS new_position,
                       heads[i.s] + row_number() OVER (PARTITION BY i.s ORDER BY i.ord)
                         AS new_version
                FROM input i
                WHERE i.stored_position IS NULL
            ),
            inserted AS (
                INSERT INTO events AS e
                    (position, id, resource, key, version, type, source, payload, "timestamp",
                     metadata)
                SELECT n.new_position, n.id, n.resource, n.key, n.new_version::integer, n.type,
                       n.source, n.payload, n."timestamp", n.metadata
                FROM numbered n
                ORDER BY n.resource, n.key, n.ord
                RETURNING e.position, e.id, e.version
            ),
            answer AS (
                SELECT i.position, i.id, i.version, false AS duplicate FROM inserted i
                UNION ALL
                SELECT i.stored_position, i.id, i.stored_version, true
                FROM input i
                WHERE i.stored_position IS NOT NULL
            )
            SELECT array_agg(a.position), array_agg(a.id), array_agg(a.version),
                   array_agg(a.duplicate)
            INTO r_position, r_id, r_version, r_duplicate
            FROM answer a;
            EXIT;
        EXCEPTION WHEN unique_violation THEN
            IF NOT may_retry THEN
                RAISE;
            END IF;
        END;
    END LOOP;

    -- Only the fast path wakes the listeners: it holds the sequencer lock, so its NOTIFY adds
    -- no contention. A pending append must not notify: every transaction that notifies takes
    -- one database-wide lock at commit (PreCommit_Notify), which would serialise the commits
    -- of all producers again. Its events are announced by the sequencer that numbers them.
    IF locked THEN
        PERFORM pg_notify(channel, base::text);
    END IF;
    RETURN QUERY
    SELECT * FROM unnest(r_position, r_id, r_version, r_duplicate);
END
$fn$;

-- name: create_append_event_v3
-- append_event_v2 with the event's metadata (see append_events_v3).
-- The same for one event, with scalar arguments (the latency-sensitive common case).
CREATE FUNCTION append_event_v3(
    new_id text, new_resource text, new_key text, new_type text, new_source text,
    new_payload jsonb, new_timestamp timestamptz, new_metadata jsonb, expected integer,
    channel text, sequence_now boolean
)
RETURNS TABLE (out_position bigint, out_id text, out_version integer, out_duplicate boolean)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $fn$
DECLARE
    locked boolean := false;  -- the fast path: we hold the sequencer lock
    stream_version integer;
    new_position bigint;
    may_retry boolean := current_setting('transaction_isolation') = 'read committed';
BEGIN
    IF sequence_now
       AND pg_try_advisory_xact_lock(hashtext('satellites.sequencer'), hashtext(current_schema()))
    THEN
        locked := true;
        PERFORM set_config('lock_timeout', '20ms', true);  -- never wait long holding the lock
    END IF;

    -- Insert first (a new event is the usual case): the unique indexes are the id check. Only
    -- when nothing was inserted, or expected_version does not match, is the id looked up: a
    -- retry of a stored event is reported as a duplicate, not as a conflict.
    LOOP
        SELECT coalesce(max(e.version), 0) INTO stream_version FROM events e
        WHERE e.resource = new_resource AND e.key = new_key;
        IF expected IS NULL OR stream_version = expected THEN
            IF locked THEN  -- numbered after the version lookup: see append_events_v3
                new_position := sequence_pending_v1(NULL) + 1;
            ELSE
                new_position := -nextval('events_pending_seq');
            END IF;
            -- ON CONFLICT DO NOTHING, not an exception block: no subtransaction (a producer
            -- appending many times in one transaction would pile them up). It waits for an
            -- in-flight append of the same id or stream version; if that one commits, nothing
            -- is inserted here.
            INSERT INTO events
                (position, id, resource, key, version, type, source, payload, "timestamp",
                 metadata)
            VALUES (new_position, new_id, new_resource, new_key, stream_version + 1, new_type,
                    new_source, new_payload, new_timestamp, new_metadata)
            ON CONFLICT DO NOTHING;
            EXIT WHEN FOUND;
        END IF;

        RETURN QUERY
        SELECT CASE WHEN e.position > 0 THEN e.position END, e.id, e.version, true
        FROM events e WHERE e.id = new_id;
        IF FOUND THEN
            IF locked THEN  -- this or an earlier round may have numbered pending events
                PERFORM pg_notify(channel, '0');
            END IF;
            RETURN;
        END IF;
        IF expected IS NOT NULL AND stream_version <> expected THEN
            RAISE EXCEPTION 'stream version conflict'
                USING ERRCODE = 'SAT01', DETAIL = stream_version::text;
        END IF;
        IF NOT may_retry THEN  -- the version was taken by an append our snapshot cannot see
            RAISE EXCEPTION 'stream version conflict' USING ERRCODE = 'unique_violation';
        END IF;
    END LOOP;

    IF locked THEN  -- a pending append must not notify: see append_events_v3
        PERFORM pg_notify(channel, new_position::text);
    END IF;
    -- The output row from variables (RETURN NEXT), not a query: the common path runs one
    -- lookup and one insert, nothing else.
    out_position := CASE WHEN new_position > 0 THEN new_position END;
    out_id := new_id;
    out_version := stream_version + 1;
    out_duplicate := false;
    RETURN NEXT;
END
$fn$;

-- name: drop_append_events_v3
DROP FUNCTION append_events_v3(
    text[], text[], text[], text[], text[], jsonb[], timestamptz[], jsonb[], integer[],
    integer[], integer[], integer, text, boolean
);

-- name: drop_append_event_v3
DROP FUNCTION append_event_v3(
    text, text, text, text, text, jsonb, timestamptz, jsonb, integer, text, boolean
);

-- name: revoke_functions_v3
-- As revoke_functions_v2, for the v3 append functions (the sequencer's are revoked already).
REVOKE ALL ON FUNCTION
    append_events_v3(text[], text[], text[], text[], text[], jsonb[], timestamptz[], jsonb[],
                     integer[], integer[], integer[], integer, text, boolean),
    append_event_v3(text, text, text, text, text, jsonb, timestamptz, jsonb, integer, text,
                    boolean)
FROM PUBLIC;

-- name: create_sequencer_state_v1
-- Migration 0006: the sequencer's floor (issue 13).
--
-- Why. The sequencer found pending rows with an index range scan of "position < 0". A numbered
-- row leaves its old pending entry in the primary key index until VACUUM removes it, and the
-- scan stepped over every one of them: after 100,000 events appended inside transactions, one
-- call with nothing to number read the dead entries of all of them (BENCHMARKS.md, issue 13).
-- The relay's leader sequences every 10 ms, so an idle log burned a core until autovacuum ran,
-- which on a large log (20% of its rows dead) may be never.
--
-- The floor. Every pending number (the allocation a, stored as position -a) up to the floor is
-- resolved: its row was numbered, or its transaction rolled back. The scan then covers only
-- "position < -floor": the dead entries below the floor are never visited again.
--
-- Moving it. A pending number can be held by a transaction still in progress (its row invisible
-- to the sequencer), and that row must be numbered once it commits, before any later version of
-- its stream: so the floor may pass a number only once its transaction has ended. The sequencer
-- reads the sequence's last allocated number C (the candidate), then takes a transaction id of
-- its own, H (the horizon). Every append takes its transaction id *before* its pending numbers
-- (append_event_v4, append_events_v4: the v3 functions with that one call first, derived
-- from their blocks by sql.transaction_id_first), and ids are handed out in order, so every transaction
-- that holds a number up to C has an id below H. (Not the xmax of a snapshot: that is the last
-- *completed* id + 1, and running transactions may hold ids above it.) A later run that sees no
-- transaction with an id below H still running (its own included) numbers everything
-- committed, which now includes every row up to C, and then moves the floor to C and takes
-- the next candidate. The
-- floor thus trails the sequence by a tick or two; a producer holding its transaction open
-- holds the floor back (the scan then visits the dead entries above it, as before) and never
-- the numbering. An unrelated transaction that took an id holds it back the same way; one that
-- only reads takes no id and is not seen. The sequence must not cache numbers per session
-- (CACHE 1, its default, made sure of below): a cached number could be handed out after the
-- candidate was read.
--
-- One row, changed only when the floor or the candidate moves (never when the log is idle).
CREATE TABLE sequencer_state (
    id boolean NOT NULL DEFAULT true,
    floor bigint NOT NULL DEFAULT 0,
    candidate bigint NOT NULL DEFAULT 0,
    horizon bigint,  -- a transaction id (xid8 as a number)
    CONSTRAINT pk_sequencer_state PRIMARY KEY (id),
    CONSTRAINT ck_sequencer_state_one_row CHECK (id)
);

-- name: init_sequencer_state_v1
INSERT INTO sequencer_state DEFAULT VALUES;

-- name: pending_seq_no_cache_v1
ALTER SEQUENCE events_pending_seq CACHE 1;

-- name: drop_sequencer_state_v1
DROP TABLE sequencer_state;

-- name: replace_sequence_pending_floor_v1
-- sequence_pending_v1 with the floor (see create_sequencer_state_v1); the same signature, so
-- the sequencer and the fast path of the append functions, which call it by name, use it as is.
CREATE OR REPLACE FUNCTION sequence_pending_v1(channel text)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
SET enable_seqscan TO off
SET enable_hashjoin TO off
SET enable_mergejoin TO off
AS $fn$
-- The caller holds the sequencer lock. Returns the new head, and wakes the log's listeners on
-- ``channel`` when it numbered something (NULL: the caller will).
DECLARE
    base bigint;
    numbered bigint;
    old_floor bigint := 0;
    old_candidate bigint := 0;
    old_horizon bigint;
    new_floor bigint;
    new_candidate bigint;
    new_horizon bigint;
    allocated bigint;
    oldest bigint;
BEGIN
    -- The head and the state in one statement (the fast path of an append runs this too).
    SELECT (SELECT coalesce(max(e.position), 0) FROM events e WHERE e.position > 0),
           coalesce(s.floor, 0), coalesce(s.candidate, 0), s.horizon
    INTO base, old_floor, old_candidate, old_horizon
    FROM (VALUES (true)) AS one (id) LEFT JOIN sequencer_state s ON s.id = one.id;
    new_floor := old_floor;
    new_candidate := old_candidate;
    new_horizon := old_horizon;
    IF old_horizon IS NOT NULL THEN
        -- The oldest transaction id still running, this one's included (a snapshot leaves its
        -- own transaction out of its xmin). Read before a horizon of our own is taken below.
        oldest := least(pg_snapshot_xmin(pg_current_snapshot())::text::bigint,
                        pg_current_xact_id_if_assigned()::text::bigint);
        IF oldest >= old_horizon THEN
            new_floor := old_candidate;  -- after the numbering below, which sees all of them
            new_horizon := NULL;
        END IF;
    END IF;
    -- No candidate waiting: take the next one, if any number was allocated. The horizon is a
    -- transaction id taken after reading the candidate, so above every id that holds a number
    -- up to it: this transaction's own, only if it has none yet (an append on the fast path took
    -- its id before; a later run then takes the candidate).
    IF new_horizon IS NULL AND pg_current_xact_id_if_assigned() IS NULL THEN
        -- (a function, not a scan of the sequence: with seqscan off, that took milliseconds)
        allocated := coalesce(pg_sequence_last_value('events_pending_seq'), 0);
        IF allocated > new_floor THEN
            new_candidate := allocated;
            new_horizon := pg_current_xact_id()::text::bigint;
        ELSE
            new_candidate := new_floor;
        END IF;
    END IF;

    UPDATE events AS e SET position = base + p.rank
    FROM (SELECT x.position AS pending, row_number() OVER (ORDER BY x.position DESC) AS rank
          FROM events x WHERE x.position < -old_floor) AS p
    WHERE e.position = p.pending;
    GET DIAGNOSTICS numbered = ROW_COUNT;

    IF (new_floor, new_candidate, new_horizon)
       IS DISTINCT FROM (old_floor, old_candidate, old_horizon) THEN
        UPDATE sequencer_state s
        SET floor = new_floor, candidate = new_candidate, horizon = new_horizon
        WHERE s.id;
    END IF;
    IF numbered > 0 AND channel IS NOT NULL THEN
        PERFORM pg_notify(channel, (base + numbered)::text);
    END IF;
    RETURN base + numbered;
END
$fn$;

-- name: revoke_sequence_pending_v1
-- A downgrade of 0006 recreates the function: its EXECUTE is revoked again.
REVOKE ALL ON FUNCTION sequence_pending_v1(text) FROM PUBLIC;

-- name: drop_append_events_v4
DROP FUNCTION append_events_v4(
    text[], text[], text[], text[], text[], jsonb[], timestamptz[], jsonb[], integer[],
    integer[], integer[], integer, text, boolean
);

-- name: drop_append_event_v4
DROP FUNCTION append_event_v4(
    text, text, text, text, text, jsonb, timestamptz, jsonb, integer, text, boolean
);

-- name: revoke_functions_v4
REVOKE ALL ON FUNCTION
    append_events_v4(text[], text[], text[], text[], text[], jsonb[], timestamptz[], jsonb[],
                     integer[], integer[], integer[], integer, text, boolean),
    append_event_v4(text, text, text, text, text, jsonb, timestamptz, jsonb, integer, text,
                    boolean)
FROM PUBLIC;

-- name: add_metadata_v1
-- Migration 0005: the envelope column. A constant default adds it without rewriting the table
-- (Postgres 11+ keeps the default in the catalogue): stored rows are not touched.
ALTER TABLE events ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}'::jsonb;

-- name: drop_metadata_v1
ALTER TABLE events DROP COLUMN metadata;

-- name: pending_position_default_v1
-- Migration 0007: a producer's own INSERT makes a pending row (issue 13).
--
-- Why. An append inside the producer's transaction was a call of append_event_v4, a SECURITY
-- DEFINER plpgsql function: under 32 concurrent producers the call itself (the definer's
-- search_path switch and back, the function's own statements, its result set) cost about as
-- much backend time as the INSERT it wraps (BENCHMARKS.md, issue 13), on a path whose whole
-- point is to be cheap. The store now sends that append as one INSERT of its own (the
-- append_pending query below) and calls the function only when it inserted nothing (an id
-- already stored, a version taken meanwhile, expected_version not met), which the function
-- sorts out as before.
--
-- What keeps the log's rules without the function. The producer role gets INSERT on the
-- columns it fills, never on position or recorded_at (roles_grant_append): every row it
-- inserts takes this default, a pending number, so only the sequencer ever gives a position.
-- The default takes the transaction id before the number (the floor's rule, see
-- create_sequencer_state_v1): nextval's argument depends on pg_current_xact_id(), and a
-- function's arguments are evaluated before it. The regclass is resolved here, once, so the
-- caller's search_path cannot redirect it.
ALTER TABLE events ALTER COLUMN position SET DEFAULT
    -nextval(CASE WHEN pg_current_xact_id() IS NOT NULL THEN 'events_pending_seq'::regclass END);

-- name: drop_pending_position_default_v1
ALTER TABLE events ALTER COLUMN position DROP DEFAULT;

-- name: append
SELECT out_position, out_id, out_version, out_duplicate
FROM {schema}.append_events_v4(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::timestamptz[],
    $8::jsonb[], $9::integer[], $10::integer[], $11::integer[], $12::integer, $13::text,
    $14::boolean
);

-- name: append_one
SELECT out_position, out_id, out_version, out_duplicate
FROM {schema}.append_event_v4(
    $1, $2, $3, $4, $5, $6::jsonb, $7, $8::jsonb, $9::integer, $10, $11::boolean
);

-- name: append_pending
-- One event inside the producer's transaction (migration 0007): pending (position from the
-- column's default), version head + 1 of its stream, nothing inserted (no row returned) when
-- the id is stored already, the version was taken by an append that committed meanwhile, or
-- the stream is not at expected_version ($9): the store then calls append_event_v4, which tells
-- these apart. A version taken by an append still in flight is waited for (ON CONFLICT).
INSERT INTO {schema}.events AS e
    (id, resource, key, version, type, source, payload, "timestamp", metadata)
SELECT $1::text, $2::text, $3::text, coalesce(max(x.version), 0) + 1, $4::text, $5::text,
       $6::jsonb, $7::timestamptz, $8::jsonb
FROM {schema}.events x WHERE x.resource = $2::text AND x.key = $3::text
HAVING $9::integer IS NULL OR coalesce(max(x.version), 0) = $9::integer
ON CONFLICT DO NOTHING
RETURNING e.version;

-- name: sequence
-- Number the committed pending events (see create_sequencer_v1); the head after it.
SELECT {schema}.sequence_events_v1($1::text);

-- name: sequenced
-- Sequence, then the positions of the events with these ids (NULL: not committed).
SELECT out_id, out_position FROM {schema}.sequenced_positions_v1($1::text[], $2::text);

-- name: read
-- (the jsonb column itself: asyncpg receives its text; a ::text cast is twice as slow to fetch)
SELECT position, id, resource, key, version, type, source, payload, "timestamp", metadata
FROM {schema}.events
WHERE position > $1 AND position <= $2
ORDER BY position
LIMIT $3;

-- name: read_types
-- read, keeping only the given types: the filter runs on the heap row before the payload is
-- detoasted and converted, so a skipped event costs an index entry and a tuple, not its payload.
SELECT position, id, resource, key, version, type, source, payload, "timestamp", metadata
FROM {schema}.events
WHERE position > $1 AND position <= $2 AND type = ANY($4::text[])
ORDER BY position
LIMIT $3;

-- name: read_stream
-- Every committed event of the stream, the pending ones (not sequenced yet) without a position.
SELECT CASE WHEN position > 0 THEN position END, id, resource, key, version, type, source,
       payload, "timestamp", metadata
FROM {schema}.events
WHERE resource = $1 AND key = $2 AND version > $3
ORDER BY version;

-- name: head
-- The highest position (pending events, below zero, are not in the sequence yet).
SELECT coalesce(max(position), 0) FROM {schema}.events WHERE position > 0;

-- name: pending
-- Committed events not numbered yet (an index range below the sequencer's floor; read-only).
SELECT count(*) FROM {schema}.events
WHERE position < -coalesce((SELECT floor FROM {schema}.sequencer_state), 0);

-- name: read_payloads
-- read_types for a replay that needs only the position, key, type and payload of an event. The
-- long string field $5 (an encoded vector) is sent as raw text beside the rest of the payload,
-- so it is neither escaped by jsonb's output nor scanned by the client's JSON decoder; where the
-- field is not a string, the payload goes whole (text NULL).
SELECT position, key, type,
       CASE WHEN jsonb_typeof(payload -> $5) = 'string' THEN payload ->> $5 END AS text,
       CASE WHEN jsonb_typeof(payload -> $5) = 'string' THEN payload - $5 ELSE payload END AS rest,
       metadata ->> 'schema_version' AS schema_version
FROM {schema}.events
WHERE position > $1 AND position <= $2 AND type = ANY($4::text[])
ORDER BY position
LIMIT $3;

-- name: read_at
-- The events at the given positions (a parked event being retried), in position order.
SELECT position, id, resource, key, version, type, source, payload, "timestamp", metadata
FROM {schema}.events
WHERE position = ANY($1::bigint[])
ORDER BY position;

-- Parked events (migration 0003, satellites_es.parking): what a projection or the relay set
-- aside. $1 kind, $2 name, $3 version throughout.

-- name: park
-- One row per event: parking it again counts an attempt. The event's id, key and type come
-- from the log where the caller did not have them (a column replay reads no ids).
INSERT INTO {schema}.parked_events AS p
    (kind, name, version, position, key, event_id, event_type, error_type, error)
SELECT $1::text, $2::text, $3::int, u.position, coalesce(u.key, e.key), coalesce(u.event_id, e.id),
       coalesce(u.event_type, e.type), u.error_type, u.error
FROM unnest($4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])
     AS u(position, key, event_id, event_type, error_type, error)
LEFT JOIN {schema}.events e ON e.position = u.position
ON CONFLICT (kind, name, version, position) DO UPDATE
SET attempts = p.attempts + 1, error_type = EXCLUDED.error_type, error = EXCLUDED.error,
    status = 'parked', last_seen = now();

-- name: parked_list
SELECT kind, name, version, position, key, event_id, event_type, error_type, error, attempts,
       status, first_seen, last_seen
FROM {schema}.parked_events
WHERE ($1::text IS NULL OR kind = $1) AND ($2::text IS NULL OR name = $2)
ORDER BY kind, name, version, position
LIMIT $3;

-- name: parked_counts
SELECT kind, name, count(*) AS parked
FROM {schema}.parked_events
GROUP BY kind, name;

-- name: parked_request_retry
-- Every version's rows of one consumer ($3 NULL: all of them; else these positions).
UPDATE {schema}.parked_events SET status = 'retry', last_seen = now()
WHERE kind = $1 AND name = $2 AND ($3::bigint[] IS NULL OR position = ANY($3::bigint[]))
RETURNING position;

-- name: parked_retries
SELECT position FROM {schema}.parked_events
WHERE kind = $1 AND name = $2 AND version = $3 AND status = 'retry'
ORDER BY position
LIMIT $4;

-- name: parked_resolve
DELETE FROM {schema}.parked_events
WHERE kind = $1 AND name = $2 AND version = $3 AND position = ANY($4::bigint[]);

-- name: parked_discard
DELETE FROM {schema}.parked_events
WHERE kind = $1 AND name = $2 AND ($3::bigint[] IS NULL OR position = ANY($3::bigint[]))
RETURNING position;

-- name: audit_fold
-- The audit's fold: every event of the projection's types up to the sink's checkpoint, by key
-- then position, so a key's events arrive together and the client holds one key at a time
-- (Postgres sorts, on disk past work_mem; the client's memory stays bounded).
SELECT position, id, resource, key, version, type, source, payload, "timestamp", metadata
FROM {schema}.events
WHERE type = ANY($1::text[]) AND position > 0 AND position <= $2
ORDER BY key, position;

-- name: audit_count
SELECT count(*) FROM {schema}.events WHERE type = ANY($1::text[]) AND position > 0 AND position <= $2;

-- name: audit_unlogged_keys
-- Of the keys a sink holds (copied into the session's temporary table audit_keys), those that
-- no event of the projection's types up to the checkpoint has: candidates for "extra".
SELECT k.key FROM audit_keys k
WHERE NOT EXISTS (
    SELECT 1 FROM {schema}.events e
    WHERE e.key = k.key AND e.type = ANY($1::text[]) AND e.position > 0 AND e.position <= $2
);

-- Projection bookkeeping (satellites_es.projections.checkpoints): a checkpoint per (projection,
-- version), and which version is active (and the one before it, for a rollback).

-- name: checkpoint_get
SELECT position FROM {schema}.projection_checkpoints WHERE projection = $1 AND version = $2;

-- name: checkpoint_save
-- Only forward (GREATEST): two projectors racing cannot move it back. Committed without waiting
-- for the WAL flush (synchronous_commit off for this statement's transaction): a Postgres crash
-- may lose the last checkpoints, and the projector then replays a little more, which the sinks'
-- positions make harmless.
WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
INSERT INTO {schema}.projection_checkpoints (projection, version, position)
SELECT $1::text, $2::int, $3::bigint FROM relaxed
ON CONFLICT (projection, version) DO UPDATE
SET position = GREATEST(projection_checkpoints.position, EXCLUDED.position), updated_at = now();

-- name: checkpoint_versions
SELECT version FROM {schema}.projection_checkpoints WHERE projection = $1 ORDER BY version;

-- name: checkpoint_forget
DELETE FROM {schema}.projection_checkpoints WHERE projection = $1 AND version = $2;

-- name: version_active
SELECT active_version, previous_version FROM {schema}.projection_versions WHERE projection = $1;

-- name: version_set_active
-- The version it replaces becomes the previous one (kept for a rollback), unless it is the same.
INSERT INTO {schema}.projection_versions AS v (projection, active_version)
VALUES ($1, $2)
ON CONFLICT (projection) DO UPDATE
SET previous_version = CASE WHEN v.active_version = EXCLUDED.active_version
                            THEN v.previous_version ELSE v.active_version END,
    active_version = EXCLUDED.active_version, updated_at = now()
RETURNING previous_version;

-- name: version_swap
UPDATE {schema}.projection_versions
SET active_version = $2, previous_version = $3, updated_at = now()
WHERE projection = $1;

-- The relay (satellites_es.relay): its cursor per relay name, and its leadership lock.

-- name: relay_lock
-- Leader election: a session advisory lock on the relay's own connection, keyed by
-- "<schema>.<name>" ($1), held for as long as that session lives.
SELECT pg_try_advisory_lock(hashtext('satellites.relay'), hashtext($1));

-- name: relay_session
-- The lease's own session: cursor writes need no WAL flush (after a Postgres crash the cursor
-- may come back a little older, and the events after it are published again).
SET synchronous_commit TO off;

-- name: relay_cursor_init
INSERT INTO {schema}.relay_cursors (name, position) VALUES ($1, 0)
ON CONFLICT (name) DO NOTHING;

-- name: relay_cursor_load
SELECT position FROM {schema}.relay_cursors WHERE name = $1;

-- name: relay_cursor_advance
-- Only forward: a fenced relay's late write cannot move a newer leader's cursor back.
UPDATE {schema}.relay_cursors SET position = $2, updated_at = now()
WHERE name = $1 AND position < $2;

-- name: oldest_after
-- When the first event after a position was recorded (the relay's oldest unpublished event).
SELECT recorded_at FROM {schema}.events WHERE position > $1 ORDER BY position LIMIT 1;

-- The read-only health check (satellites_es.healthcheck), on a read-only connection.

-- name: health_log_exists
SELECT to_regclass('{schema}.events') IS NOT NULL;

-- name: health_cursors
SELECT name, position FROM {schema}.relay_cursors ORDER BY name;

-- name: health_projections
SELECT v.projection, v.active_version, c.position
FROM {schema}.projection_versions v
LEFT JOIN {schema}.projection_checkpoints c
       ON c.projection = v.projection AND c.version = v.active_version
ORDER BY v.projection;

-- The demo's run lock (satellites_es.demo.namespace.exclusive): one demo at a time per schema
-- of a database, held by its session for the whole run.

-- name: demo_try_lock
SELECT pg_try_advisory_lock(hashtext('satellites.demo'), hashtext($1));

-- Sessions: TLS, the server's version, a heartbeat (backends, health, leases).

-- name: session_ssl
-- Whether this session is under TLS (the server's word, not the client's intent).
SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false);

-- name: server_version
SHOW server_version;

-- name: heartbeat
SELECT 1;

-- name: snapshotter_lock
-- The FAISS snapshotter's leader election (satellites_es.projections.snapshotter): a session
-- advisory lock keyed by "<schema>.<projection>" ($1).
SELECT pg_try_advisory_lock(hashtext('satellites.snapshotter'), hashtext($1));

-- Migrations (satellites_es.migrate, migrations/env.py). {schema} and {database} are
-- validated, quoted identifiers.

-- name: migration_lock
-- Taken first by every upgrade: concurrent upgrades of one schema run one at a time.
SELECT pg_advisory_xact_lock(hashtext('satellites.migrate.' || current_schema()));

-- name: migrate_schema_owner
SELECT pg_get_userbyid(nspowner) AS owner, pg_has_role(current_user, nspowner, 'USAGE') AS mine
FROM pg_namespace WHERE nspname = $1;

-- name: migrate_may_create_schema
SELECT has_database_privilege(current_database(), 'CREATE');

-- name: migrate_revision_readable
-- $1: the schema, $2: its alembic_version table, qualified.
SELECT has_schema_privilege($1, 'USAGE')
       AND coalesce(has_table_privilege(to_regclass($2), 'SELECT'), false);

-- name: migrate_revision
SELECT version_num FROM {schema}.alembic_version LIMIT 1;

-- name: database_exists
SELECT 1 FROM pg_database WHERE datname = $1;

-- name: create_database
CREATE DATABASE {database};

-- name: schema_exists
SELECT 1 FROM pg_namespace WHERE nspname = $1;

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS {schema};

-- The demo's own namespace (satellites_es.demo.namespace): reset only when it carries the
-- demo's marker ({marker}: a quoted literal).

-- name: demo_schema_marker
SELECT obj_description(oid, 'pg_namespace') AS marker,
       (SELECT count(*) FROM pg_class WHERE relnamespace = n.oid) AS relations
FROM pg_namespace n WHERE nspname = $1;

-- name: demo_drop_schema
DROP SCHEMA IF EXISTS {schema} CASCADE;

-- name: demo_create_schema
CREATE SCHEMA {schema};

-- name: demo_mark_schema
COMMENT ON SCHEMA {schema} IS {marker};

-- The audit's session table of the keys a sink holds (satellites_es.audit).

-- name: audit_keys_create
CREATE TEMPORARY TABLE audit_keys (key text) ON COMMIT DROP;

-- name: audit_keys_analyze
ANALYZE audit_keys;

-- Roles and grants (satellites_es.roles). {schema}, {role}, {producer}, {reader}, {owner},
-- {group}, {roles} and {database} are validated, quoted identifiers; {object} is one of the
-- function or table names the module lists.

-- name: roles_count
SELECT count(*) FROM pg_roles WHERE rolname = ANY($1::text[]);

-- name: roles_present_objects
-- Of the names $1, those that exist in schema $2 as a table or a function.
SELECT coalesce(array_agg(n), '{}') FROM unnest($1::text[]) AS n
WHERE to_regclass($2 || '.' || n) IS NOT NULL OR to_regproc($2 || '.' || n) IS NOT NULL;

-- name: roles_grant_usage
GRANT USAGE ON SCHEMA {schema} TO {producer}, {reader};

-- name: roles_revoke_function_from_public
REVOKE EXECUTE ON FUNCTION {schema}.{object} FROM PUBLIC;

-- name: roles_grant_function
GRANT EXECUTE ON FUNCTION {schema}.{object} TO {role};

-- name: roles_grant_read
GRANT SELECT ON {schema}.{object} TO {role};

-- name: roles_grant_write
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.{object} TO {role};

-- name: roles_grant_append
-- A producer's own INSERT (append_pending, migration 0007): the columns it fills and the version
-- lookup's, and the pending numbers' sequence for the position default. Not position nor
-- recorded_at: its rows are pending until the sequencer numbers them.
GRANT INSERT (id, resource, key, version, type, source, payload, "timestamp", metadata),
      SELECT (resource, key, version)
ON {schema}.events TO {role};
GRANT USAGE ON SEQUENCE {schema}.events_pending_seq TO {role};

-- name: roles_pending_default
-- Whether $1.events.position has migration 0007's default (producers then insert themselves).
SELECT EXISTS (
    SELECT 1 FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
    WHERE d.adrelid = to_regclass($1 || '.events') AND a.attname = 'position'
);

-- name: roles_grant_membership
GRANT {group} TO {role};

-- name: roles_grant_connect
GRANT CONNECT ON DATABASE {database} TO {roles};

-- name: roles_create_schema
CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {owner};

-- name: roles_schema_owner
ALTER SCHEMA {schema} OWNER TO {owner};

-- name: roles_relation_exists
SELECT to_regclass($1) IS NOT NULL;

-- name: roles_act_as_owner
SET LOCAL ROLE {owner};

-- name: role_exists
SELECT 1 FROM pg_roles WHERE rolname = $1;

-- name: role_create_login
CREATE ROLE {role} LOGIN;

-- name: role_create_group
CREATE ROLE {role} NOLOGIN;

-- name: quote_literal
-- PASSWORD takes a literal, not a parameter: quoted by the server.
SELECT quote_literal($1);

-- name: role_set_password
-- {password}: a literal quoted by quote_literal.
ALTER ROLE {role} PASSWORD {password};
