"""Least privilege on the throwaway cluster: the owner migrates, the producer appends (one event,
a batch, in its own transaction with expected_version) and can change nothing else, the reader
runs the relay and a projector; no role but the owner can UPDATE, DELETE or TRUNCATE an event."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from satellites_es import ConcurrencyError, DataEvent, DataLayer, DataLayerConfig
from satellites_es.config import FaissConfig
from satellites_es.errors import ConfigurationError
from satellites_es.migrate import upgrade
from satellites_es.projections import Checkpoints, Projector, ensure_active
from satellites_es.projections.faiss_sink import FaissSink
from satellites_es.testing.services import unique_name
from satellites_es.vectors import VectorIndex
from tests.integration.test_projections import DIM, make_projection

from .support import PgCluster

PASSWORDS = {"owner": "own-s3cret", "producer": "prod-s3cret", "reader": "read-s3cret"}


def _env(cluster: PgCluster, user: str, schema: str, **extra: str) -> dict[str, str]:
    return {
        "SATELLITES_POSTGRES_URL": cluster.url(user, PASSWORDS[user.rsplit("_", 1)[1]]),
        "SATELLITES_POSTGRES_SCHEMA": schema,
        "SATELLITES_POSTGRES_MIN_CONNECTIONS": "1",
        "SATELLITES_POSTGRES_MAX_CONNECTIONS": "3",
        **{f"SATELLITES_{b}_ENABLED": "false" for b in ("REDIS", "RABBITMQ", "ELASTICSEARCH", "FAISS")},
        **extra,
    }  # fmt: skip


@pytest.fixture
def roles(pg_cluster: PgCluster, tmp_path: Path) -> dict[str, str]:
    """``satellites-es db roles`` run by the administrator, as documented."""
    schema = unique_name("r")
    names = {kind: f"{schema}_{kind[0]}_{kind}" for kind in PASSWORDS}
    files = []
    for kind, name in names.items():
        (tmp_path / kind).write_text(PASSWORDS[kind] + "\n")
        files += ["--password-file", f"{name}={tmp_path / kind}"]
    env = {"SATELLITES_POSTGRES_URL": pg_cluster.url(), "SATELLITES_POSTGRES_SCHEMA": schema,
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "satellites_es.cli", "db", "roles", "--owner", names["owner"],
         "--producer", names["producer"], "--reader", names["reader"], *files],
        env={**env, "PYTHONPATH": ":".join(sys.path)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"schema {schema} owned by {names['owner']}" in out.stdout
    assert not any(p in out.stdout + out.stderr for p in PASSWORDS.values())
    return {"schema": schema, **names}


def _event(key: str, n: int) -> DataEvent:
    return DataEvent(type="doc.created", resource="docs", key=key, payload={"n": n}, source="t")


async def test_owner_migrates_producer_appends_reader_relays_and_projects(
    pg_cluster: PgCluster, roles: dict[str, str], tmp_path: Path
) -> None:
    schema = roles["schema"]
    owner = DataLayerConfig.from_env(_env(pg_cluster, roles["owner"], schema)).postgres
    await upgrade(owner)  # the owner migrates; the grants follow

    # the producer: auto_migrate skipped (it cannot migrate, the schema is current), no relay
    producer_env = _env(pg_cluster, roles["producer"], schema, SATELLITES_RELAY_ENABLED="false")
    async with DataLayer(DataLayerConfig.from_env(producer_env)) as data:
        await data.events.publish(_event("a", 1))  # one event
        await data.log.append([_event("b", 1), _event("c", 1), _event("b", 2)])  # a batch
        async with data.postgres.acquire() as conn, conn.transaction():  # its own transaction
            await data.log.append(_event("a", 2), conn=conn, expected_version=1)
        with pytest.raises(ConcurrencyError):
            await data.log.append(_event("a", 3), expected_version=1)
        async with data.postgres.acquire() as conn:  # a decoy "events" in its temporary schema
            await conn.execute(
                "CREATE TEMP TABLE events (position bigint, id text, resource text, key text,"
                " version int, type text, source text, payload jsonb, timestamp timestamptz)"
            )
            await data.log.append(_event("d", 1), conn=conn)  # still lands in the real log
            assert await conn.fetchval("SELECT count(*) FROM pg_temp.events") == 0
        async with data.postgres.acquire() as conn:
            # no payload read, no change, and no position of its own choosing (migration 0007:
            # its INSERT may name only the columns an event carries; the row stays pending)
            row = (
                "INSERT INTO {s}.events ({c}id, resource, key, version, type, source, payload,"
                " timestamp) VALUES ({v}'x', 'r', 'k', 1, 't', 's', '{{}}', now())"
            )
            for sql in ("UPDATE {s}.events SET type = 'x'", "DELETE FROM {s}.events",
                        "TRUNCATE {s}.events", "SELECT payload FROM {s}.events",
                        "SELECT * FROM {s}.events", row.replace("{c}", "position, ").replace(
                            "{v}", "1, "), row.replace("{c}", "recorded_at, ").replace(
                            "{v}", "now(), "), "SELECT * FROM {s}.sequence_events_v1('c')",
                        "INSERT INTO {s}.relay_cursors (name) VALUES ('x')"):  # fmt: skip
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql.format(s=f'"{schema}"'))
            # what it may do by hand is what the store's append does: insert a pending row
            tx = conn.transaction()
            await tx.start()
            await conn.execute(row.format(s=f'"{schema}"', c="", v=""))
            version = await conn.fetchval(f'SELECT version FROM "{schema}".events WHERE key = $1',
                                          "k")  # fmt: skip
            await tx.rollback()
            assert version == 1

    # the reader: runs the relay (cursor, lock, listener) and a projector (versions, checkpoints)
    reader_env = _env(pg_cluster, roles["reader"], schema)
    got: list[DataEvent] = []
    reader = DataLayer(DataLayerConfig.from_env(reader_env))

    async def handler(event: DataEvent) -> None:
        got.append(event)

    reader.events.subscribe_all(handler)
    async with reader:
        for _ in range(200):
            if len(got) >= 6:
                break
            await asyncio.sleep(0.05)
        assert sorted((e.key, e.version) for e in got) == [
            ("a", 1), ("a", 2), ("b", 1), ("b", 2), ("c", 1), ("d", 1)
        ]  # fmt: skip
        async with reader.postgres.acquire() as conn:
            for sql in ("UPDATE {s}.events SET type = 'x'", "DELETE FROM {s}.events",
                        "TRUNCATE {s}.events",
                        "SELECT * FROM {s}.append_event_v4('i', 'r', 'k', 't', 's', '{{}}',"
                        " now(), '{{}}', NULL, 'c', true)"):  # fmt: skip
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql.format(s=f'"{schema}"'))
        p = make_projection("faiss")
        checkpoints = Checkpoints(reader.postgres, schema)
        async with VectorIndex(FaissConfig(index_path=tmp_path / "f", dimension=DIM)) as vectors:
            sink = FaissSink(vectors)
            await ensure_active(p, sink, checkpoints)
            result = await Projector(p, sink, reader.log, checkpoints).catch_up()
            assert result.position == await reader.log.head() == 6
            assert await checkpoints.get(p.name, 1) == 6


async def test_a_role_that_cannot_migrate_an_outdated_schema_is_told_who_can(
    pg_cluster: PgCluster, roles: dict[str, str]
) -> None:
    env = _env(pg_cluster, roles["producer"], roles["schema"], SATELLITES_RELAY_ENABLED="false")
    with pytest.raises(ConfigurationError, match="SATELLITES_LOG_AUTO_MIGRATE") as info:
        await DataLayer(DataLayerConfig.from_env(env)).start()
    assert "satellites-es migrate" in str(info.value) and roles["owner"] in str(info.value)
