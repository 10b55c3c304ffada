from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta, timezone

import pytest

from satellites_es.envelope import EventMetadata
from satellites_es.errors import InvalidEventError
from satellites_es.events import DataEvent, EventBus, InProcessEventBus


def make(type_: str = "document.indexed", key: str = "d1", **payload: object) -> DataEvent:
    return DataEvent(type=type_, resource="documents", key=key, payload=payload, source="test")


def test_event_has_unique_id_and_aware_timestamp() -> None:
    a, b = make(), make()
    assert a.id != b.id
    assert a.timestamp.tzinfo is not None
    assert abs(a.timestamp - datetime.now(UTC)) < timedelta(seconds=5)


def test_json_round_trip_is_exact() -> None:
    tz = timezone(timedelta(hours=5, minutes=30))
    e = DataEvent(
        type="user.created", resource="users", key="u-1",
        payload={"name": "Ada", "tags": ["a", "b"], "n": 1.5, "nested": {"x": None}},
        source="postgres", timestamp=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=tz),
        version=3, position=42,
    )  # fmt: skip
    back = DataEvent.from_json(e.to_json())
    assert back == e
    assert back.to_json() == e.to_json()


@pytest.mark.parametrize(
    ("key", "payload", "version", "position"),
    [
        ("d1", {}, None, None),
        ('quo"te\\ü€\n', {"z": [1, 2.5, None, True], "a": {"é": "\u2028"}}, 7, 12),
        ("k", {"big": 2**70, "neg": -0.0, "e": 1e300}, 0, 0),
    ],
)
def test_to_json_is_json_dumps_of_to_dict(
    key: str, payload: dict[str, object], version: int | None, position: int | None
) -> None:
    """to_json composes the text itself (speed); it must equal the obvious definition."""
    e = DataEvent(type="t.x", resource="r/1", key=key, payload=payload, source="s",
                  version=version, position=position)  # fmt: skip
    assert e.to_json() == json.dumps(e.to_dict(), separators=(",", ":"), sort_keys=True)


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "", "resource": "r", "key": "k", "payload": {}, "source": "s"},
        {"type": "t", "resource": "r", "key": "k", "payload": [], "source": "s"},
        {
            "type": "t",
            "resource": "r",
            "key": "k",
            "payload": {},
            "source": "s",
            "timestamp": datetime(2026, 1, 1),
        },  # naive
    ],
)
def test_invalid_events_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidEventError):
        DataEvent(**bad)  # type: ignore[arg-type]


def test_missing_field_in_json_is_named() -> None:
    with pytest.raises(InvalidEventError, match="key"):
        DataEvent.from_dict({"id": "x", "type": "t", "resource": "r", "payload": {}, "source": "s"})
    with pytest.raises(InvalidEventError):
        DataEvent.from_json("{not json")


def test_payload_that_is_not_json_is_refused() -> None:
    e = make(blob=object())
    with pytest.raises(InvalidEventError, match="JSON"):
        e.to_json()
    with pytest.raises(InvalidEventError):
        make(x=float("nan")).payload_json()


def test_in_process_bus_satisfies_the_protocol() -> None:
    assert isinstance(InProcessEventBus(), EventBus)


async def test_delivery_order_type_handlers_then_global_in_subscription_order() -> None:
    bus = InProcessEventBus()
    seen: list[str] = []

    async def h(name: str, e: DataEvent) -> None:
        seen.append(f"{name}:{e.key}")

    async def a(e: DataEvent) -> None:
        await h("a", e)

    async def b(e: DataEvent) -> None:
        await h("b", e)

    async def g(e: DataEvent) -> None:
        await h("g", e)

    async def other(e: DataEvent) -> None:
        await h("other", e)

    bus.subscribe_all(g)
    bus.subscribe("document.indexed", a)
    bus.subscribe("document.indexed", b)
    bus.subscribe("user.created", other)
    await bus.publish(make(key="1"))
    await bus.publish(make(key="2"))
    assert seen == ["a:1", "b:1", "g:1", "a:2", "b:2", "g:2"]


async def test_failing_handler_does_not_block_others_and_is_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = InProcessEventBus()
    got: list[str] = []
    errors: list[str] = []
    bus.on_handler_error = lambda name, exc: errors.append(name)

    async def boom(e: DataEvent) -> None:
        raise RuntimeError("kaput")

    async def fine(e: DataEvent) -> None:
        got.append(e.key)

    bus.subscribe("document.indexed", boom)
    bus.subscribe("document.indexed", fine)
    bus.subscribe_all(fine)
    with caplog.at_level(logging.ERROR):
        await bus.publish(make(key="k"))
    assert got == ["k", "k"]
    assert bus.handler_errors == 1
    assert errors and errors[0].endswith("boom")
    assert "kaput" in caplog.text and "boom" in caplog.text


async def test_unsubscribe_stops_delivery_and_unknown_is_noop() -> None:
    bus = InProcessEventBus()
    got: list[str] = []

    async def h(e: DataEvent) -> None:
        got.append(e.key)

    bus.subscribe("document.indexed", h)
    bus.subscribe("document.indexed", h)  # twice -> delivered twice
    await bus.publish(make(key="1"))
    bus.unsubscribe("document.indexed", h)
    await bus.publish(make(key="2"))
    bus.unsubscribe("document.indexed", h)
    bus.unsubscribe("document.indexed", h)  # no-op
    bus.unsubscribe("never.subscribed", h)
    await bus.publish(make(key="3"))
    assert got == ["1", "1", "2"]


async def test_an_event_published_in_a_handler_without_the_log_is_caused_by_it() -> None:
    bus = InProcessEventBus()
    seen: list[DataEvent] = []

    async def first(event: DataEvent) -> None:
        await bus.publish(DataEvent(type="b", resource="r", key="k", payload={}, source="s"))

    async def second(event: DataEvent) -> None:
        seen.append(event)

    bus.subscribe("a", first)
    bus.subscribe("b", second)
    cause = DataEvent(type="a", resource="r", key="k", payload={}, source="s",
                      metadata={"correlation_id": "conv", "actor": "ann"})  # fmt: skip
    await bus.publish(cause)
    await bus.publish(DataEvent(type="b", resource="r", key="k", payload={}, source="s"))
    assert [e.metadata for e in seen] == [
        EventMetadata(causation_id=cause.id, correlation_id="conv"), EventMetadata()
    ]  # fmt: skip
    assert cause.to_dict()["metadata"] == {"actor": "ann", "correlation_id": "conv"}
    assert DataEvent.from_json(cause.to_json()) == cause
