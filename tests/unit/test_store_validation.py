"""The event log's checks that need no database: validation, encoding, results, SQL blocks."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from satellites_es import sql
from satellites_es.config import EventLogConfig
from satellites_es.envelope import MAX_METADATA_BYTES
from satellites_es.errors import ConfigurationError, InvalidEventError
from satellites_es.events import DataEvent
from satellites_es.schema import metadata
from satellites_es.store import (
    AppendResult,
    EventStore,
    _first_of_each_id,
    _joined,
    _stored,
    encode_batch,
)


def event(**fields: Any) -> DataEvent:
    base: dict[str, Any] = {"type": "t", "resource": "r", "key": "k", "payload": {"a": 1},
                            "source": "s"}  # fmt: skip
    return DataEvent(**{**base, **fields})


def test_encode_batch_gives_column_arrays() -> None:
    ts = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    a, b = event(id="a", timestamp=ts, payload={"z": 1, "x": "é"}), event(id="b", key="k2")
    b = dataclasses.replace(b, metadata={"actor": "ann", "headers": {"h": "é"}}, schema_version=3)
    ids, resources, keys, types, sources, payloads, stamps, metas = encode_batch([a, b], 100)
    assert (ids, resources, keys, types, sources) == (
        ["a", "b"], ["r", "r"], ["k", "k2"], ["t", "t"], ["s", "s"]
    )  # fmt: skip
    assert payloads[0] == '{"z":1,"x":"\\u00e9"}' and stamps[0] == ts
    assert metas == ["{}", '{"actor":"ann","headers":{"h":"\\u00e9"},"schema_version":3}']


def test_batch_text_columns_are_joined_unless_a_value_holds_the_separator() -> None:
    """The batched append sends each text column as one string split by the server; a value
    holding the separator (allowed in a key) sends them as arrays, which need no escaping.
    JSON escapes control characters, so a payload never holds it."""
    sep = sql.UNIT_SEPARATOR
    columns = encode_batch([event(id="a", payload={"t": sep}), event(id="b", key="k,2")], 1000)
    joined = _joined(columns)
    assert joined is not None
    assert joined[0] == f"a{sep}b" and joined[2] == f"k{sep}k,2" and joined[6] == columns[6]
    assert joined[5] == sep.join(columns[5]) and sep not in columns[5][0]
    assert _joined(encode_batch([event(id="a"), event(id="b", key=f"k{sep}")], 1000)) is None
    assert _joined(encode_batch([event(id="a"), event(id="b", source=sep)], 1000)) is None


def test_joined_arrays_rewrites_only_the_named_array_parameters() -> None:
    query = "SELECT f($1::text[], $2::timestamptz[], $10::jsonb[], $11::integer)"
    assert sql.joined_arrays(query, (1, 10)) == (
        "SELECT f(string_to_array($1::text, E'\\x1f')::text[], $2::timestamptz[], "
        "string_to_array($10::text, E'\\x1f')::jsonb[], $11::integer)"
    )
    with pytest.raises(ValueError, match="not an array parameter"):
        sql.joined_arrays(query, (11,))


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"actor": 7}, "metadata.actor must be a non-empty string"),
        ({"actor": ""}, "metadata.actor must be a non-empty string"),
        ({"correlation_id": "a\x00b"}, "NUL"),
        ({"headers": {"k": 1}}, "headers\\['k'\\] must be a string"),
        ({"headers": {"": "v"}}, "headers name must be a non-empty string"),
        ({"headers": ["k"]}, "must be a mapping"),
        ({"user": "ann"}, "unknown field"),
    ],
)
def test_bad_metadata(metadata: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEventError, match=message):
        event(metadata=metadata)


def test_metadata_over_the_size_limit_is_refused_whole() -> None:
    big = event(id="big", metadata={"headers": {"h": "x" * MAX_METADATA_BYTES}})
    with pytest.raises(InvalidEventError, match=r"event 'big': metadata is \d+ bytes"):
        encode_batch([event(), big], 10_000)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"x": object()}, "not JSON-serialisable"),
        ({"x": float("inf")}, "not JSON-serialisable"),
        ({1j: 1}, "not JSON-serialisable"),
        ({"x": "y" * 100}, "over max_payload_bytes"),
        ({"x": "a\x00b"}, "NUL"),
    ],
)
def test_bad_payloads(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEventError, match=message):
        encode_batch([event(), event(payload=payload)], 64)


def test_an_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    encode_batch([event(payload={"x": "\\u0000"})], 64)


def test_payload_size_is_counted_in_bytes_of_the_stored_json() -> None:
    encode_batch([event(payload={"x": "é" * 5})], len('{"x":""}') + 30)
    with pytest.raises(InvalidEventError):
        encode_batch([event(payload={"x": "é" * 5})], len('{"x":""}') + 29)


@pytest.mark.parametrize("field", ["id", "type", "resource", "key", "source"])
def test_missing_or_nul_fields(field: str) -> None:
    broken = event()
    object.__setattr__(broken, field, None)
    with pytest.raises(InvalidEventError, match=field):
        encode_batch([broken], 1000)
    object.__setattr__(broken, field, "a\x00")
    with pytest.raises(InvalidEventError, match="NUL"):
        encode_batch([broken], 1000)


def test_not_an_event_and_naive_timestamps() -> None:
    with pytest.raises(InvalidEventError, match="expected a DataEvent"):
        encode_batch([{"type": "t"}], 1000)  # type: ignore[list-item]
    naive = event()
    object.__setattr__(naive, "timestamp", datetime(2026, 1, 1))
    with pytest.raises(InvalidEventError, match="timezone"):
        encode_batch([naive], 1000)


def test_repeated_ids_are_sent_once() -> None:
    a, b = event(id="a"), event(id="b")
    assert _first_of_each_id([a, b, a]) == [a, b]
    with pytest.raises(InvalidEventError):
        _first_of_each_id([a, "x"])  # type: ignore[list-item]


def test_stored_copy_sets_position_and_version_only() -> None:
    original = event()
    stored = _stored(original, 7, 3)
    assert (stored.position, stored.version) == (7, 3)
    assert (original.position, original.version) == (None, None)
    assert stored.to_dict() == {**original.to_dict(), "position": 7, "version": 3}


def test_append_result_last_position() -> None:
    assert AppendResult(events=()).last_position == 0
    result = AppendResult(events=(_stored(event(), 4, 1), _stored(event(), 9, 2)))
    assert result.last_position == 9


def test_store_refuses_unsafe_schema_and_long_channel() -> None:
    with pytest.raises(ConfigurationError):
        EventStore(None, schema='x"; DROP', config=EventLogConfig())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        EventStore(None, schema="s", config=EventLogConfig(notify_channel="c" * 62))  # type: ignore[arg-type]
    store = EventStore(None, schema="tenant_a", config=EventLogConfig())  # type: ignore[arg-type]
    assert store.channel == "satellites_events.tenant_a"


def test_sql_blocks_and_schema_quoting() -> None:
    blocks = sql.queries("my_schema")
    assert {"append", "append_one", "read", "read_stream", "head"} <= set(blocks)
    assert '"my_schema".events' in blocks["read"]
    assert "{schema}" not in "".join(blocks.values())
    assert "LOCK TABLE events IN EXCLUSIVE MODE" in sql.load("create_append_events_v1")
    for bad in ("Public", "a-b", "x;y", "", "1abc", "a" * 64):
        with pytest.raises(ValueError):
            sql.quote_schema(bad)


def test_metadata_tables_and_constraint_names() -> None:
    assert set(metadata.tables) == {
        "events", "relay_cursors", "projection_checkpoints", "projection_versions",
        "parked_events", "sequencer_state",
    }  # fmt: skip
    events = metadata.tables["events"]
    assert events.schema is None  # placed by search_path, per deployment and per test
    names = {c.name for c in events.constraints}
    assert {"pk_events", "uq_events_id", "uq_events_resource_key_version"} <= names
