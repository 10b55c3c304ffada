"""``satellites-es audit NAME [--repair]`` as an operator runs it, on the demo's ``entities``
projection (shipped in the package) in the test's own namespace."""

from __future__ import annotations

import asyncio
import dataclasses

import redis.asyncio as aioredis

from satellites_es.config import DataLayerConfig
from satellites_es.events import DataEvent
from satellites_es.facade import DataLayer

from .conftest import run_cli


async def _append_authors(env: dict[str, str], n: int) -> None:
    config = DataLayerConfig.from_env(env)
    config = config.replace(relay=dataclasses.replace(config.relay, enabled=False))
    async with DataLayer(config) as data:
        await data.log.append([
            DataEvent(type="entity.upserted", resource="entities", key=f"author-{i:04d}",
                      source="test", payload={"name": f"author {i}", "topic": "t"})
            for i in range(n)
        ])  # fmt: skip


async def _delete(env: dict[str, str], *keys: str) -> None:
    client = aioredis.Redis.from_url(env["SATELLITES_REDIS_URL"])
    prefix = env["SATELLITES_REDIS_KEY_PREFIX"]
    try:
        await client.delete(*(f"{prefix}entities_v1:{k}" for k in keys))
    finally:
        await client.aclose()


def test_audit_finds_drift_exits_one_and_repair_makes_it_clean(cli_env: dict[str, str]) -> None:
    asyncio.run(_append_authors(cli_env, 50))
    built = run_cli(["rebuild", "entities"], cli_env)
    assert built.returncode == 0, built.stdout + built.stderr

    clean = run_cli(["audit", "entities"], cli_env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "50 keys from 50 events" in clean.stdout and "clean" in clean.stdout
    assert "audit entities" in clean.stdout and "100%" in clean.stdout  # the progress bar

    asyncio.run(_delete(cli_env, "author-0007", "author-0011"))
    drifted = run_cli(["audit", "entities"], cli_env)
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    assert "missing=2" in drifted.stdout and "author-0007, author-0011" in drifted.stdout
    (line,) = drifted.stderr.strip().splitlines()
    assert line == ("satellites-es: drift: entities differs from the log "
                    "(audit --repair rewrites them from the log)")  # fmt: skip

    repaired = run_cli(["audit", "entities", "--repair"], cli_env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired 2 of 2 drifted key(s)" in repaired.stdout
    assert run_cli(["audit", "entities"], cli_env).returncode == 0
