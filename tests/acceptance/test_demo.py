"""The README's main job: the demo, on this machine's services and on embedded defaults."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import asyncpg

from satellites_es.testing.services import find_service_url

from .conftest import run_cli

EXPECTED = (
    r"Appended \d+ events to the log",
    r"Projections caught up: .*documents v1.*",
    r"Semantic search \(FAISS\)",
    r"doc-\d{5} .* vector-search",  # the vector query finds documents of the topic asked for
    r"Full-text search \(Elasticsearch",
    r"Cached entity \(Redis\) author-0007: \{'name': ",
    r"Read your writes: position \d+ visible in Elasticsearch",
    r"rebuild embeddings .*100%",
    r"Rebuilt embeddings into version 2 \(previous 1\) and flipped",
    # the semantic layer: change sets embedded by the real model (the wordllama extra is a dev
    # dependency), three searches, read-your-writes through search, a re-embed
    r"Semantic layer.*embedded by wordllama-l2supercat-256",
    r"Wrote \d+ documents and \d+ authors through change sets",
    r"hybrid search: 'rabbitmq consumers",
    r"text search: 'rabbitmq consumers",
    r"vector search: 'rabbitmq consumers",
    r"Read your writes through search.*found by a hybrid search in \d+ ms: doc-new",
    r"re-embed library_vectors with hashing-384 .*100%",
    r"Re-embedded library_vectors with hashing-384 into version 2 \(previous 1\) and flipped",
    r"The bus delivered \d+ events to a subscriber",
    r"demo finished OK",
)


def _check(output: str) -> None:
    for pattern in EXPECTED:
        assert re.search(pattern, output), f"missing {pattern!r} in:\n{output}"
    print(output)
    appended = int(re.search(r"Appended (\d+) events", output).group(1))  # type: ignore[union-attr]
    delivered = int(re.search(r"delivered (\d+) events", output).group(1))  # type: ignore[union-attr]
    assert delivered >= appended  # every event reached the subscriber (one more: the update)


def test_demo_on_this_machines_services(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli(["demo", "--documents", "300", "--data-dir", str(tmp_path)], cli_env)
    assert result.returncode == 0, result.stdout + result.stderr
    _check(result.stdout)
    assert "rabbitmq      │ configured" in result.stdout or "rabbitmq │ configured" in result.stdout


def test_demo_on_embedded_defaults_as_a_new_user(tmp_path: Path) -> None:
    """Nothing configured, nothing used from localhost: embedded Postgres, Valkey, ES emulator."""
    result = run_cli(["demo", "--embedded", "--documents", "200", "--data-dir", str(tmp_path)], {})
    assert result.returncode == 0, result.stdout + result.stderr
    _check(result.stdout)
    for line in ("postgres", "redis", "elasticsearch"):
        assert re.search(rf"{line}\s*│ embedded", result.stdout), result.stdout
    assert re.search(r"rabbitmq\s*│ in-process", result.stdout)
    # and the layer really ran on them: the embedded servers' versions, not this machine's
    local_pg = asyncio.run(_server_version(find_service_url("postgres")))
    embedded_pg = re.search(r"Backends: .*postgres ([\d.]+)", result.stdout)
    assert embedded_pg and embedded_pg.group(1) != local_pg, result.stdout
    assert (tmp_path / "postgres" / "PG_VERSION").exists()
    assert (tmp_path / "valkey").is_dir()


async def _server_version(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SHOW server_version")).split()[0]
    finally:
        await conn.close()


def test_demo_failure_is_a_clear_non_zero_exit(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = {
        **cli_env,
        "SATELLITES_REDIS_URL": "redis://127.0.0.1:1/0",
        "SATELLITES_CONNECT_TIMEOUT": "1",
    }
    result = run_cli(["demo", "--documents", "50", "--data-dir", str(tmp_path)], env)
    assert result.returncode == 1
    assert "demo failed" in result.stderr and "redis" in result.stderr
