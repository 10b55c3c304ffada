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

-- name: append
SELECT out_position, out_id, out_version, out_duplicate
FROM {schema}.append_events_v1(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::timestamptz[],
    $8::integer[], $9::integer[], $10::integer[], $11::integer, $12::text
);

-- name: append_one
SELECT out_position, out_id, out_version, out_duplicate
FROM {schema}.append_event_v1($1, $2, $3, $4, $5, $6::jsonb, $7, $8::integer, $9);

-- name: read
-- (the jsonb column itself: asyncpg receives its text; a ::text cast is twice as slow to fetch)
SELECT position, id, resource, key, version, type, source, payload, "timestamp"
FROM {schema}.events
WHERE position > $1 AND position <= $2
ORDER BY position
LIMIT $3;

-- name: read_types
-- read, keeping only the given types: the filter runs on the heap row before the payload is
-- detoasted and converted, so a skipped event costs an index entry and a tuple, not its payload.
SELECT position, id, resource, key, version, type, source, payload, "timestamp"
FROM {schema}.events
WHERE position > $1 AND position <= $2 AND type = ANY($4::text[])
ORDER BY position
LIMIT $3;

-- name: read_stream
SELECT position, id, resource, key, version, type, source, payload, "timestamp"
FROM {schema}.events
WHERE resource = $1 AND key = $2 AND version > $3
ORDER BY version;

-- name: head
SELECT coalesce(max(position), 0) FROM {schema}.events;

-- name: read_payloads
-- read_types for a replay that needs only the position, key, type and payload of an event. The
-- long string field $5 (an encoded vector) is sent as raw text beside the rest of the payload,
-- so it is neither escaped by jsonb's output nor scanned by the client's JSON decoder; where the
-- field is not a string, the payload goes whole (text NULL).
SELECT position, key, type,
       CASE WHEN jsonb_typeof(payload -> $5) = 'string' THEN payload ->> $5 END AS text,
       CASE WHEN jsonb_typeof(payload -> $5) = 'string' THEN payload - $5 ELSE payload END AS rest
FROM {schema}.events
WHERE position > $1 AND position <= $2 AND type = ANY($4::text[])
ORDER BY position
LIMIT $3;

-- name: read_at
-- The events at the given positions (a parked event being retried), in position order.
SELECT position, id, resource, key, version, type, source, payload, "timestamp"
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
SELECT position, id, resource, key, version, type, source, payload, "timestamp"
FROM {schema}.events
WHERE type = ANY($1::text[]) AND position <= $2
ORDER BY key, position;

-- name: audit_count
SELECT count(*) FROM {schema}.events WHERE type = ANY($1::text[]) AND position <= $2;

-- name: audit_unlogged_keys
-- Of the keys a sink holds (copied into the session's temporary table audit_keys), those that
-- no event of the projection's types up to the checkpoint has: candidates for "extra".
SELECT k.key FROM audit_keys k
WHERE NOT EXISTS (
    SELECT 1 FROM {schema}.events e
    WHERE e.key = k.key AND e.type = ANY($1::text[]) AND e.position <= $2
);
