"""Reading the log: keyset batches, bounds, streams, head; bad input leaves it unchanged."""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

import asyncpg
import pytest

from satellites_es.errors import InvalidEventError
from satellites_es.events import DataEvent
from satellites_es.store import EventStore
from tests.integration.conftest import EventFactory


async def test_read_after_until_and_batches(store: EventStore, make_event: EventFactory) -> None:
    await store.append([make_event(f"k{i % 3}") for i in range(25)])
    batches = [b async for b in store.read(after=3, batch_size=10, until=20)]
    assert [len(b) for b in batches] == [10, 7]
    assert [e.position for b in batches for e in b] == list(range(4, 21))
    assert [b async for b in store.read(after=25)] == []
    assert all(e.version is not None for b in batches for e in b)


async def test_read_stream_and_head(store: EventStore, make_event: EventFactory) -> None:
    assert await store.head() == 0
    await store.append([make_event("a"), make_event("b"), make_event("a"), make_event("a")])
    stream = await store.read_stream("users", "a", after_version=1)
    assert [(e.version, e.position) for e in stream] == [(2, 3), (3, 4)]
    assert await store.read_stream("users", "missing") == []
    assert await store.head() == 4


async def test_read_50k_in_batches_streams_with_constant_memory(
    store: EventStore, pool: asyncpg.Pool, pg_schema: str
) -> None:
    total, size = 50_000, 1000
    # Seeded in one statement to keep the test fast; append is tested elsewhere.
    await pool.execute(
        f'INSERT INTO "{pg_schema}".events'
        ' (position, id, resource, key, version, type, source, payload, "timestamp")'
        " SELECT g, 'e' || g, 'users', 'k' || (g % 100), (g - 1) / 100 + 1, 'user.updated',"
        "        'test', jsonb_build_object('n', g), now()"
        " FROM generate_series(1, $1) AS g",
        total,
    )
    expected, alive_most = 1, 0
    first_events: list[weakref.ref[DataEvent]] = []
    async for batch in store.read(batch_size=size):
        assert len(batch) <= size
        assert [e.position for e in batch] == list(range(expected, expected + len(batch)))
        assert batch[0].payload == {"n": expected}
        expected += len(batch)
        first_events.append(weakref.ref(batch[0]))
        alive_most = max(alive_most, sum(ref() is not None for ref in first_events))
    assert expected - 1 == total and len(first_events) == total // size
    # Constant memory: nothing holds on to earlier batches (at most this one and the last).
    assert alive_most <= 2


def _unserialisable() -> dict[str, Any]:
    return {"when": object()}


@pytest.mark.parametrize(
    "bad",
    ["not-json", "nan", "too-large", "nul-in-payload", "nul-in-key", "missing-key", "not-event"],
)
async def test_bad_input_is_rejected_before_anything_is_written(
    store: EventStore, make_event: EventFactory, bad: str
) -> None:
    good = make_event()
    await store.append(make_event())
    broken: Any
    if bad == "not-json":
        broken = make_event(payload=_unserialisable())
    elif bad == "nan":
        broken = make_event(payload={"x": float("nan")})
    elif bad == "too-large":
        broken = make_event(payload={"blob": "x" * 5000})  # log_config: 4096 bytes
    elif bad == "nul-in-payload":
        broken = make_event(payload={"s": "a\x00b"})
    elif bad == "nul-in-key":
        broken = make_event(key="a\x00b")
    elif bad == "missing-key":
        broken = make_event()
        object.__setattr__(broken, "key", None)
    else:
        broken = {"type": "user.updated", "resource": "users", "key": "k", "payload": {}}
    with pytest.raises(InvalidEventError):
        await store.append([good, broken])
    assert await store.head() == 1
    assert good.id not in [e.id async for b in store.read() for e in b]


async def test_expected_version_needs_one_stream(
    store: EventStore, make_event: EventFactory
) -> None:
    with pytest.raises(InvalidEventError):
        await store.append([make_event("a"), make_event("b")], expected_version=0)
    assert await store.head() == 0


async def test_payload_just_under_the_limit_is_stored(
    store: EventStore, make_event: EventFactory
) -> None:
    event = make_event(payload={"blob": "x" * (4096 - len('{"blob":""}'))})
    assert len(event.payload_json()) == 4096
    result = await store.append(event)
    assert result.last_position == 1
    [stored] = [e async for b in store.read() for e in b]
    assert isinstance(stored, DataEvent) and stored.payload == event.payload


async def test_type_filtered_read_returns_exactly_the_matching_events_in_order(
    store: EventStore, make_event: EventFactory
) -> None:
    kinds = ("user.created", "user.updated", "user.deleted")
    await store.append([make_event(f"k{i % 4}", type=kinds[i % 3]) for i in range(50)])
    every = [e async for b in store.read() for e in b]
    wanted = {"user.created", "user.deleted"}
    expected = [(e.position, e.id) for e in every if e.type in wanted]
    for size in (1, 3, 7, 34, 100):  # across batch boundaries, and one batch
        for read_ahead in (False, True):
            batches = [
                b async for b in store.read(batch_size=size, types=wanted, read_ahead=read_ahead)
            ]
            assert all(0 < len(b) <= size for b in batches)
            assert [(e.position, e.id) for b in batches for e in b] == expected
    got = [e async for b in store.read(after=10, until=40, types=["user.updated"]) for e in b]
    assert [e.position for e in got] == [p for p in range(11, 41) if p % 3 == 2]
    assert [b async for b in store.read(types=["nobody.sends.this"])] == []
    assert [b async for b in store.read(types=[])] == []


async def test_read_ahead_reads_the_same_batches(
    store: EventStore, make_event: EventFactory
) -> None:
    await store.append([make_event(f"k{i % 5}") for i in range(23)])
    for size in (1, 5, 23, 50):
        plain = [[e.id for e in b] async for b in store.read(batch_size=size, until=21)]
        ahead = [
            [e.id for e in b] async for b in store.read(batch_size=size, until=21, read_ahead=True)
        ]
        assert ahead == plain and sum(map(len, plain)) == 21


async def test_leaving_a_read_ahead_early_releases_its_connection(
    store: EventStore, pool: asyncpg.Pool, make_event: EventFactory
) -> None:
    await store.append([make_event() for _ in range(30)])
    for _ in range(3):
        batches = store.read(batch_size=5, read_ahead=True)
        async with contextlib.aclosing(batches):  # type: ignore[type-var]
            async for _batch in batches:
                break  # the next batch is being fetched: closing cancels it
    assert pool.get_idle_size() == pool.get_size()  # nothing left holding a connection


@pytest.mark.parametrize("types", ["user.updated", b"user.updated", [""], ["a", 3], 7, ["a\x00b"]])
async def test_a_bad_type_filter_is_a_typed_error(store: EventStore, types: Any) -> None:
    with pytest.raises(InvalidEventError):
        [b async for b in store.read(types=types)]


async def test_a_stored_payload_that_is_not_an_object_is_a_typed_error(
    store: EventStore, pool: asyncpg.Pool, pg_schema: str, make_event: EventFactory
) -> None:
    await store.append(make_event())
    await pool.execute(f"UPDATE \"{pg_schema}\".events SET payload = '[1, 2]'::jsonb")
    with pytest.raises(InvalidEventError):
        [b async for b in store.read()]


async def test_payloads_read_back_exactly(store: EventStore, make_event: EventFactory) -> None:
    payload = {
        "big": 2**70,
        "neg": -(2**63) - 1,
        "float": 0.1,
        "tiny": 5e-324,
        "text": 'é ✓ "quoted" \\ \u2028',
        "nested": {"list": [1, None, True, {"x": []}]},
    }
    await store.append(make_event(payload=payload))
    [stored] = [e async for b in store.read() for e in b]
    assert stored.payload == payload and type(stored.payload["big"]) is int


async def test_read_payloads_gives_what_read_gives(
    store: EventStore, make_event: EventFactory
) -> None:
    """Position, key, type and the whole payload, whatever the text field holds: an encoded
    vector (sent apart as raw text), escapes and unicode, a list, another type, nothing."""
    vectors = [
        "f32:AACAPwAAAEA=",
        'é ✓ "quoted" \\ \u2028 \t',
        [0.5, 1, -2.25],
        {"nested": "object"},
        None,
        17,
        "",
    ]
    events = []
    for i in range(40):
        payload: dict[str, Any] = {"n": i, "meta": {"title": f"t{i}", "big": 2**70}}
        if i % 8 != 7:
            payload["vector"] = vectors[i % 8 % len(vectors)]
        kind = "vec.deleted" if i % 5 == 4 else "vec.upserted"
        events.append(make_event(f"k{i % 6}", type=kind, payload=payload))
    events.append(make_event("other", type="user.updated"))
    await store.append(events)
    types = ["vec.upserted", "vec.deleted"]
    expected = [
        (e.position, e.key, e.type, e.payload) async for b in store.read(types=types) for e in b
    ]
    assert len(expected) == 40
    for size in (1, 7, 40, 100):
        for read_ahead in (False, True):
            got = []
            async for page in store.read_payloads(
                types=types, text_field="vector", batch_size=size, read_ahead=read_ahead
            ):
                assert 0 < len(page) <= size
                got += zip(page.positions, page.keys, page.types, page.payloads, strict=True)
            assert got == expected
            assert all(type(p["meta"]["big"]) is int for *_, p in got)
    tail = [p async for p in store.read_payloads(after=30, until=35, types=types,
                                                 text_field="vector")]  # fmt: skip
    assert [pos for p in tail for pos in p.positions] == [31, 32, 33, 34, 35]
    assert [p async for p in store.read_payloads(types=[], text_field="vector")] == []


@pytest.mark.parametrize("field", ["", None, 3])
async def test_read_payloads_needs_a_text_field(store: EventStore, field: Any) -> None:
    with pytest.raises(InvalidEventError):
        [p async for p in store.read_payloads(types=["a"], text_field=field)]


async def test_payloads_are_stored_in_the_row_not_in_toast(
    store: EventStore, pool: asyncpg.Pool, pg_schema: str, make_event: EventFactory
) -> None:
    """Migration 0002: a ~2.2 KB embedding payload (base64 does not compress) stays inline, so
    the vector and the rest of the payload are read apart without TOAST lookups."""
    import numpy as np

    from satellites_es.vectors.codec import encode_vector

    vector = encode_vector(np.random.default_rng(1).standard_normal(384))
    await store.append([make_event(f"v{i}", payload={"vector": vector}) for i in range(20)])
    toast = await pool.fetchval(
        "SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = $1::regclass",
        f'"{pg_schema}".events',
    )
    assert await pool.fetchval(f"SELECT count(*) FROM {toast}") == 0
    [page] = [p async for p in store.read_payloads(types=["user.updated"], text_field="vector")]
    assert page.payloads == [{"vector": vector}] * 20
