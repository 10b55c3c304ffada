"""The message contract (docs/contract/) against what the relay sends, read by a consumer written
with ``pika``, not with this project's code: its own queues, bound as the contract says."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import zlib
from pathlib import Path
from typing import Any

import jsonschema
import pika
import pytest

from satellites_es.config import DataLayerConfig
from satellites_es.envelope import EventMetadata
from satellites_es.events import DataEvent
from satellites_es.facade import DataLayer
from satellites_es.upcasting import Upcasters

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "contract"
SCHEMA = json.loads((CONTRACT / "event.schema.json").read_text())
ASYNCAPI = json.loads((CONTRACT / "asyncapi.json").read_text())
HEADERS = ASYNCAPI["components"]["messages"]["dataEvent"]["headers"]
# built once: jsonschema.validate() checks the schema itself on every call (~20 ms each)
BODY = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
HEADER = jsonschema.Draft202012Validator(HEADERS)


class ForeignConsumer:
    """A blocking pika consumer in a thread: a queue of its own per binding key."""

    def __init__(self, url: str, exchange: str, bindings: dict[str, str]) -> None:
        self.url, self.exchange, self.bindings = url, exchange, bindings
        self.received: dict[str, list[tuple[Any, dict[str, Any], str]]] = {q: [] for q in bindings}
        self.ready, self.stop = threading.Event(), threading.Event()
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ForeignConsumer:
        self._thread.start()
        assert self.ready.wait(20), self.errors
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(20)

    def _run(self) -> None:
        try:
            conn = pika.BlockingConnection(pika.URLParameters(self.url))
            channel = conn.channel()
            channel.basic_qos(prefetch_count=100)
            for queue, key in self.bindings.items():
                channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
                channel.queue_bind(queue, self.exchange, routing_key=key)
                channel.basic_consume(queue, self._on(queue))
            self.ready.set()
            while not self.stop.is_set():
                conn.process_data_events(time_limit=0.1)
            for queue in self.bindings:
                channel.queue_delete(queue)
            conn.close()
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
            self.ready.set()

    def _on(self, queue: str) -> Any:
        def on_message(channel: Any, method: Any, props: Any, body: bytes) -> None:
            self.received[queue].append((props, dict(props.headers or {}), body.decode()))
            channel.basic_ack(method.delivery_tag)

        return on_message


def _check_message(
    props: Any, headers: dict[str, Any], body: str, partitions: int
) -> dict[str, Any]:
    event = json.loads(body)
    BODY.validate(event)
    HEADER.validate(headers)
    assert props.content_type == "application/json" and props.delivery_mode == 2
    assert props.message_id == event["id"] and props.type == event["type"]
    assert {k: headers[k] for k in ("resource", "key", "position", "version")} == {
        k: event[k] for k in ("resource", "key", "position", "version")
    }
    # the partition, computed as the contract says
    crc = zlib.crc32(f"{event['resource']}\x1f{event['key']}".encode()) % partitions
    assert headers["partition"] == crc
    return event


def _assert_key_order(events: list[dict[str, Any]]) -> None:
    last: dict[tuple[str, str], int] = {}
    for e in events:
        stream = (e["resource"], e["key"])
        assert e["version"] > last.get(stream, 0), (stream, e["version"])
        last[stream] = e["version"]


async def test_a_pika_consumer_bound_as_the_contract_says_gets_valid_ordered_events(
    config: DataLayerConfig, amqp_url: str, test_id: str
) -> None:
    cfg = config.replace(faiss=dataclasses.replace(config.faiss, enabled=False))
    rabbit = cfg.rabbitmq
    bindings = {f"{test_id}.pika.all": "#", f"{test_id}.pika.indexed": "*.document.indexed",
                f"{test_id}.pika.resource": "*.document.*"}  # fmt: skip
    async with DataLayer(cfg) as data:  # declares the exchange
        with ForeignConsumer(amqp_url, rabbit.exchange, bindings) as pika_consumer:
            types = ["document.indexed", "document.deleted", "user.created"]
            appended = await data.log.append(
                [DataEvent(type=types[i % 3], resource="documents" if i % 3 < 2 else "users",
                           key=f"k{i % 23}", payload={"i": i, "text": "é…"}, source="test")
                 for i in range(900)]
            )  # fmt: skip
            counts = {f"{test_id}.pika.all": 900, f"{test_id}.pika.indexed": 300,
                      f"{test_id}.pika.resource": 600}  # fmt: skip
            async with asyncio.timeout(30):
                while any(len(pika_consumer.received[q]) < n for q, n in counts.items()):
                    assert not pika_consumer.errors, pika_consumer.errors
                    await asyncio.sleep(0.05)
    assert not pika_consumer.errors
    for queue, n in counts.items():
        events = [_check_message(*m, rabbit.partitions) for m in pika_consumer.received[queue]]
        assert len(events) == n
        _assert_key_order(events)
    everything = [json.loads(m[2]) for m in pika_consumer.received[f"{test_id}.pika.all"]]
    assert {e["position"] for e in everything} == {e.position for e in appended.events}
    assert {e["type"] for m in [pika_consumer.received[f"{test_id}.pika.indexed"]] for e in
            (json.loads(x[2]) for x in m)} == {"document.indexed"}  # fmt: skip


async def test_a_pika_consumer_sees_the_envelope_as_the_contract_says(
    config: DataLayerConfig, amqp_url: str, test_id: str
) -> None:
    """Metadata travels in the body and as AMQP correlation_id and headers, schema version
    included; the body and headers still validate. The relay publishes the current schema
    version: a v1 event is upcast to v2 on its way out."""
    cfg = config.replace(faiss=dataclasses.replace(config.faiss, enabled=False))
    upcasters = Upcasters()
    upcasters.register("document.indexed", 1, lambda payload: {**payload, "upcast": True})
    metadata = EventMetadata(
        correlation_id="req-1", causation_id="cmd-1", actor="user:ann", tracestate="v=1",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        headers={"tenant": "acme"},
    )  # fmt: skip
    queue = f"{test_id}.pika.envelope"
    async with DataLayer(cfg, upcasters=upcasters) as data:
        with ForeignConsumer(amqp_url, cfg.rabbitmq.exchange, {queue: "#"}) as pika_consumer:
            sent = DataEvent(type="document.indexed", resource="documents", key="d1",
                             payload={}, source="test", metadata=metadata, schema_version=2)  # fmt: skip
            await data.log.append([sent, DataEvent(type="document.indexed", resource="documents",
                                                   key="d2", payload={}, source="test")])  # fmt: skip
            async with asyncio.timeout(30):
                while len(pika_consumer.received[queue]) < 2:
                    assert not pika_consumer.errors, pika_consumer.errors
                    await asyncio.sleep(0.05)
    (props, headers, body), (plain_props, plain_headers, plain_body) = pika_consumer.received[queue]
    event = _check_message(props, headers, body, cfg.rabbitmq.partitions)
    assert event["metadata"] == metadata.to_dict() and event["schema_version"] == 2
    assert props.correlation_id == "req-1"
    assert {k: headers[k] for k in ("causation-id", "actor", "traceparent", "tracestate",
                                    "h-tenant", "schema-version")} == {
        "causation-id": "cmd-1", "actor": "user:ann", "traceparent": metadata.traceparent,
        "tracestate": "v=1", "h-tenant": "acme", "schema-version": 2,
    }  # fmt: skip
    plain = _check_message(plain_props, plain_headers, plain_body, cfg.rabbitmq.partitions)
    assert plain["metadata"] == {} and plain["schema_version"] == 2
    assert plain["payload"] == {"upcast": True} and event["payload"] == {}  # sent at v2 already
    assert plain_props.correlation_id is None and "actor" not in plain_headers


def test_the_schema_rejects_what_is_not_an_event() -> None:
    good = json.loads(DataEvent(type="t", resource="r", key="k", payload={}, source="s").to_json())
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    BODY.validate(good)
    for broken in ({**good, "payload": [1]}, {k: v for k, v in good.items() if k != "key"},
                   {**good, "position": "7"}, {**good, "metadata": {"headers": {"h": 1}}},
                   {**good, "schema_version": 0}):  # fmt: skip
        with pytest.raises(jsonschema.ValidationError):
            BODY.validate(broken)
    assert ASYNCAPI["components"]["messages"]["dataEvent"]["payload"]["$ref"] == "event.schema.json"
