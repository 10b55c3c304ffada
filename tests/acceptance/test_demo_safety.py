"""The demo destroys nothing it did not create: the user's namespace is never its own, and a
part of its own namespace that holds someone else's data makes it refuse before clearing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from elasticsearch import AsyncElasticsearch

from satellites_es.config import DataLayerConfig
from satellites_es.demo.namespace import DemoNamespaceError, claim

from .conftest import run_cli
from .test_demo import _check


async def _fill(env: dict[str, str]) -> None:
    """A table with rows in the user's schema, keys under their prefix, an index under theirs,
    a file in their FAISS directory."""
    schema = env["SATELLITES_POSTGRES_SCHEMA"]
    conn = await asyncpg.connect(env["SATELLITES_POSTGRES_URL"])
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'CREATE TABLE "{schema}".customers (id int primary key, name text)')
        await conn.execute(f"INSERT INTO \"{schema}\".customers VALUES (1, 'ada'), (2, 'grace')")
    finally:
        await conn.close()
    client = aioredis.Redis.from_url(env["SATELLITES_REDIS_URL"])
    try:
        for i in range(5):
            await client.set(f"{env['SATELLITES_REDIS_KEY_PREFIX']}session:{i}", b"user data")
    finally:
        await client.aclose()
    es = AsyncElasticsearch(env["SATELLITES_ELASTICSEARCH_URL"])
    try:
        index = f"{env['SATELLITES_ELASTICSEARCH_INDEX_PREFIX']}orders"
        await es.index(index=index, id="o1", document={"total": 42}, refresh=True)
    finally:
        await es.close()
    faiss = Path(env["SATELLITES_FAISS_INDEX_PATH"])
    await asyncio.to_thread(faiss.mkdir, parents=True)
    await asyncio.to_thread((faiss / "precious.bin").write_bytes, b"\x00" * 64)


async def _intact(env: dict[str, str]) -> dict[str, object]:
    schema = env["SATELLITES_POSTGRES_SCHEMA"]
    conn = await asyncpg.connect(env["SATELLITES_POSTGRES_URL"])
    try:
        rows = await conn.fetchval(f'SELECT count(*) FROM "{schema}".customers')
    finally:
        await conn.close()
    client = aioredis.Redis.from_url(env["SATELLITES_REDIS_URL"])
    try:
        prefix = env["SATELLITES_REDIS_KEY_PREFIX"]
        keys = len([k async for k in client.scan_iter(match=f"{prefix}session:*")])
    finally:
        await client.aclose()
    es = AsyncElasticsearch(env["SATELLITES_ELASTICSEARCH_URL"])
    try:
        index = f"{env['SATELLITES_ELASTICSEARCH_INDEX_PREFIX']}orders"
        order = (await es.get(index=index, id="o1"))["_source"]
        await es.indices.delete(index=index)
    finally:
        await es.close()
    faiss = Path(env["SATELLITES_FAISS_INDEX_PATH"]) / "precious.bin"
    return {"rows": rows, "keys": keys, "order": order, "faiss": faiss.read_bytes()}


def test_the_demo_leaves_the_configured_namespace_intact(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    asyncio.run(_fill(cli_env))
    result = run_cli(["demo", "--documents", "200", "--data-dir", str(tmp_path / "demo")], cli_env)
    assert result.returncode == 0, result.stdout + result.stderr
    _check(result.stdout)
    assert asyncio.run(_intact(cli_env)) == {
        "rows": 2, "keys": 5, "order": {"total": 42}, "faiss": b"\x00" * 64,
    }  # fmt: skip


async def test_claim_refuses_every_part_it_did_not_create_and_clears_none(
    cli_env: dict[str, str],
) -> None:
    """The demo's namespace pointed (as a test may) at a namespace of someone else's."""
    await _fill(cli_env)
    config = DataLayerConfig.from_env(cli_env)
    with pytest.raises(DemoNamespaceError) as refused:
        await claim(config)
    message = str(refused.value)
    schema = cli_env["SATELLITES_POSTGRES_SCHEMA"]
    for named in (f"Postgres schema {schema!r}", "5 Redis key(s)", "1 Elasticsearch index(es)",
                  f"FAISS directory {cli_env['SATELLITES_FAISS_INDEX_PATH']!r}"):  # fmt: skip
        assert named in message, message
    assert await _intact(cli_env) == {
        "rows": 2, "keys": 5, "order": {"total": 42}, "faiss": b"\x00" * 64,
    }  # fmt: skip


async def test_claim_clears_and_marks_what_it_created(cli_env: dict[str, str]) -> None:
    config = DataLayerConfig.from_env(cli_env)
    await claim(config)  # empty: taken, and marked
    faiss = Path(cli_env["SATELLITES_FAISS_INDEX_PATH"])
    (faiss / "left-by-a-demo-run").write_text("x")
    client = aioredis.Redis.from_url(cli_env["SATELLITES_REDIS_URL"])
    prefix = cli_env["SATELLITES_REDIS_KEY_PREFIX"]
    try:
        await client.set(f"{prefix}entities_v1:author-1", b"x")
        await claim(config)  # marked: cleared without complaint
        left = sorted([k async for k in client.scan_iter(match=f"{prefix}*")])
    finally:
        await client.aclose()
    assert left == [f"{prefix}__satellites_demo__".encode()]
    names = await asyncio.to_thread(lambda: sorted(p.name for p in faiss.iterdir()))
    assert names == [".satellites-demo"]
    es = AsyncElasticsearch(cli_env["SATELLITES_ELASTICSEARCH_URL"])
    try:
        marker = f"{cli_env['SATELLITES_ELASTICSEARCH_INDEX_PREFIX']}satellites-demo-marker"
        assert await es.indices.exists(index=marker)
        await es.indices.delete(index=marker)
    finally:
        await es.close()


def test_the_cli_refuses_a_foreign_faiss_directory_in_one_line(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    data_dir = tmp_path / "demo"
    (data_dir / "faiss").mkdir(parents=True)
    (data_dir / "faiss" / "mine.index").write_bytes(b"not the demo's")
    result = run_cli(["demo", "--documents", "50", "--data-dir", str(data_dir)], cli_env)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to clear" in lines[0], result.stderr
    assert "FAISS directory" in lines[0] and "Traceback" not in result.stderr
    assert (data_dir / "faiss" / "mine.index").read_bytes() == b"not the demo's"
