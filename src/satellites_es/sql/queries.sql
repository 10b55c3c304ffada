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
CREATE FUNCTION append_events_v1(batch jsonb, expected integer, channel text)
RETURNS TABLE (out_position bigint, out_id text, out_version integer, out_duplicate boolean)
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    base bigint;
    actual integer;
    top bigint;
BEGIN
    LOCK TABLE events IN EXCLUSIVE MODE;
    SELECT coalesce(max(e.position), 0) INTO base FROM events e;

    IF expected IS NOT NULL AND EXISTS (
        SELECT 1 FROM jsonb_array_elements(batch) b
        WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = b->>'id')
    ) THEN
        SELECT coalesce(max(e.version), 0) INTO actual FROM events e
        WHERE e.resource = batch->0->>'resource' AND e.key = batch->0->>'key';
        IF actual <> expected THEN
            RAISE EXCEPTION 'stream version conflict'
                USING ERRCODE = 'SAT01', DETAIL = actual::text;
        END IF;
    END IF;

    RETURN QUERY
    WITH input AS (
        SELECT x.*
        FROM ROWS FROM (jsonb_to_recordset(batch) AS (
            id text, resource text, key text, type text, source text, payload jsonb,
            "timestamp" timestamptz
        )) WITH ORDINALITY AS x(id, resource, key, type, source, payload, "timestamp", ord)
    ),
    fresh AS (
        SELECT DISTINCT ON (i.id) i.*
        FROM input i
        WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = i.id)
        ORDER BY i.id, i.ord
    ),
    numbered AS (
        SELECT f.*,
               base + row_number() OVER (ORDER BY f.ord) AS new_position,
               coalesce(
                   (SELECT max(e.version) FROM events e
                    WHERE e.resource = f.resource AND e.key = f.key), 0
               ) + row_number() OVER (PARTITION BY f.resource, f.key ORDER BY f.ord)
                 AS new_version
        FROM fresh f
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
    SELECT e.position, e.id, e.version, true
    FROM events e
    WHERE e.id IN (SELECT i.id FROM input i);

    SELECT max(e.position) INTO top FROM events e;
    IF top > base THEN
        PERFORM pg_notify(channel, top::text);
    END IF;
END
$fn$;

-- name: drop_append_events_v1
DROP FUNCTION append_events_v1(jsonb, integer, text);

-- name: append
SELECT out_position, out_id, out_version, out_duplicate
FROM {schema}.append_events_v1($1::jsonb, $2::integer, $3::text);

-- name: read
SELECT position, id, resource, key, version, type, source, payload::text AS payload, "timestamp"
FROM {schema}.events
WHERE position > $1 AND position <= $2
ORDER BY position
LIMIT $3;

-- name: read_stream
SELECT position, id, resource, key, version, type, source, payload::text AS payload, "timestamp"
FROM {schema}.events
WHERE resource = $1 AND key = $2 AND version > $3
ORDER BY version;

-- name: head
SELECT coalesce(max(position), 0) FROM {schema}.events;
