"""``satellites-es run`` with one backend gone (issue 12): Elasticsearch stopped for 30 s while
events keep coming. The relay and the Redis and FAISS projectors keep working throughout,
``/health`` says Elasticsearch is down (503), a restart of the service during the outage comes
up instead of exiting, and once Elasticsearch is back the ES projector catches up and its index
equals a fresh replay of the log.

Elasticsearch here is always a noida-db emulator of the test's own (it has to be stopped and
started again on the same port and data directory), whatever ``SATELLITES_ELASTICSEARCH_URL``
says for the rest of the suite.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import asyncpg
from elasticsearch import AsyncElasticsearch

from satellites_es.config import DataLayerConfig, EventLogConfig
from satellites_es.events import DataEvent
from satellites_es.migrate import upgrade
from satellites_es.projections import Checkpoints, Projector
from satellites_es.projections.es_sink import ElasticsearchSink
from satellites_es.store import EventStore
from satellites_es.testing.services import EmulatedElasticsearch, free_port
from satellites_es.vectors.codec import encode_vector

from .conftest import CLI
from .test_service_cli import _get, _wait_http

OUTAGE = 30.0


def _events(rng: random.Random, n: int) -> list[DataEvent]:
    out = []
    for _ in range(n):
        k = rng.randrange(40)
        kind = rng.choice(("entity", "document", "embedding"))
        if kind == "entity":
            payload = {"name": f"author {k}", "n": rng.random()}
        elif kind == "document":
            payload = {"title": f"doc {k}", "body": f"body {rng.random()}", "topic": "t"}
        else:
            vector = [rng.uniform(-1, 1) for _ in range(384)]
            payload = {"vector": encode_vector(vector), "title": f"e{k}", "topic": "t",
                       "model": "test"}  # fmt: skip
        out.append(DataEvent(type=f"{kind}.upserted", resource=f"{kind}s", key=f"{kind[0]}{k}",
                             payload=payload, source="test"))  # fmt: skip
    return out


async def _append(config: DataLayerConfig, events: list[DataEvent]) -> int:
    pool = await asyncpg.create_pool(config.postgres.dsn, min_size=1, max_size=2)
    try:
        store = EventStore(pool, schema=config.postgres.schema, config=EventLogConfig())
        return (await store.append(events)).last_position
    finally:
        await pool.close()


async def _positions(config: DataLayerConfig) -> dict[str, int]:
    conn = await asyncpg.connect(config.postgres.dsn)
    schema = config.postgres.schema
    try:
        rows = await conn.fetch(
            f'SELECT projection, position FROM "{schema}".projection_checkpoints'
        )
        relay = await conn.fetchval(f'SELECT max(position) FROM "{schema}".relay_cursors')
    finally:
        await conn.close()
    return {**{r["projection"]: r["position"] for r in rows}, "relay": int(relay or 0)}


def _start(env: dict[str, str], port: int) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SATELLITES_")}
    full.update(env)
    return subprocess.Popen(
        [*CLI, "run", "-p", "entities", "-p", "documents", "-p", "embeddings",
         "--http-port", str(port)],
        env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_run_keeps_the_relay_and_the_other_projectors_going_while_elasticsearch_is_down(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    es = EmulatedElasticsearch(data_dir=tmp_path / "es")
    es.start()
    env = {**cli_env, "SATELLITES_ELASTICSEARCH_URL": es.url, "SATELLITES_CONNECT_TIMEOUT": "3"}
    config = DataLayerConfig.from_env(env)
    asyncio.run(upgrade(config.postgres))
    rng = random.Random(12)
    head = asyncio.run(_append(config, _events(rng, 150)))
    port = free_port()
    health = f"http://127.0.0.1:{port}/health"
    proc = _start(env, port)
    procs = [proc]
    try:
        _wait_http(health, proc)
        _until(lambda: min(asyncio.run(_positions(config)).values()) >= head, 60, "catch-up")
        assert _get(health)[0] == 200

        es.stop()
        started, restarted = time.monotonic(), False
        while time.monotonic() - started < OUTAGE:
            head = asyncio.run(_append(config, _events(rng, 20)))
            time.sleep(1.0)
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            if not restarted and time.monotonic() - started > OUTAGE / 2:
                # restarted during the outage: it must come up, not exit 1
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0, proc.communicate()[1][-3000:]
                proc = _start(env, port)
                procs.append(proc)
                _wait_http(health, proc)
                restarted = True
        status, body = _get(health)
        report = json.loads(body)
        assert status == 503 and report["backends"]["elasticsearch"]["status"] == "down", body
        assert report["projections"]["documents"]["state"] == "backend_down", body
        assert report["projections"]["documents"]["backend"] == "elasticsearch", body
        assert report["projections"]["entities"]["ok"] and report["projections"]["embeddings"]["ok"]
        # the relay and the Redis and FAISS projectors kept up throughout
        _until(lambda: all(asyncio.run(_positions(config))[n] >= head
                           for n in ("relay", "entities", "embeddings")), 20, "the others")  # fmt: skip
        assert asyncio.run(_positions(config))["documents"] < head

        es.start()  # same port, same data directory
        _until(lambda: asyncio.run(_positions(config))["documents"] >= head, 90, "ES catch-up")
        _until(lambda: _get(health)[0] == 200, 30, "/health 200 again")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert asyncio.run(_equals_a_fresh_replay(config, es.url))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
        es.stop()


async def _equals_a_fresh_replay(config: DataLayerConfig, url: str) -> bool:
    from satellites_es.projections.discovery import load_projections

    documents = load_projections(config.projections_module)["documents"]
    fresh = dataclasses.replace(documents, name="documents_fresh")
    pool = await asyncpg.create_pool(config.postgres.dsn, min_size=1, max_size=3)
    client = AsyncElasticsearch(url)
    try:
        store = EventStore(pool, schema=config.postgres.schema, config=EventLogConfig())
        checkpoints = Checkpoints(pool, config.postgres.schema)
        sink = ElasticsearchSink(client, config.elasticsearch.index_prefix)
        await Projector(fresh, sink, store, checkpoints).catch_up()
        live, replayed = await sink.dump(documents, 1), await sink.dump(fresh, 1)
        assert len(live) > 10  # keys d0..d39 that had a document event
        return live == replayed
    finally:
        await client.close()
        await pool.close()
