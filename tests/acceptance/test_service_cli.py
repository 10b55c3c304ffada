"""``satellites-es run`` as an operator runs it: /health, /metrics, SIGTERM, and exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import asyncpg

from satellites_es.config import DataLayerConfig
from satellites_es.events import DataEvent
from satellites_es.migrate import upgrade
from satellites_es.testing.services import free_port

from .conftest import CLI, run_cli

METRICS = (
    "satellites_log_head_position",
    "satellites_log_pending_events",
    "satellites_relay_lag_events",
    "satellites_relay_oldest_unpublished_seconds",
    "satellites_projection_lag_events",
    "satellites_dead_letters",
    "satellites_vector_query_seconds",
    "satellites_backend_up",
)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_http(url: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            _get(url)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


async def _append(config: DataLayerConfig, n: int) -> int:
    from satellites_es.facade import DataLayer

    async with DataLayer(config.replace(relay=config.relay.__class__(enabled=False))) as data:
        events = [DataEvent(type="entity.upserted", resource="entities", key=f"e{i % 50}",
                            payload={"name": f"n{i}"}, source="test") for i in range(n)]  # fmt: skip
        return (await data.log.append(events)).last_position


async def _checkpoints(config: DataLayerConfig) -> dict[str, int]:
    conn = await asyncpg.connect(config.postgres.dsn)
    try:
        rows = await conn.fetch(
            f'SELECT projection, position FROM "{config.postgres.schema}".projection_checkpoints'
        )
        return {r["projection"]: r["position"] for r in rows}
    finally:
        await conn.close()


def test_run_serves_health_and_metrics_and_stops_cleanly_on_sigterm(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    config = DataLayerConfig.from_env(cli_env)
    asyncio.run(upgrade(config.postgres))
    head = asyncio.run(_append(config, 500))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SATELLITES_")}
    env.update(cli_env)
    proc = subprocess.Popen(
        [*CLI, "run", "-p", "entities", "--http-port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
        deadline = time.monotonic() + 60
        while asyncio.run(_checkpoints(config)).get("entities", 0) < head:
            assert time.monotonic() < deadline, "the projector never caught up"
            time.sleep(0.2)
        status, body = _get(f"http://127.0.0.1:{port}/health")
        health = json.loads(body)
        assert status == 200 and health["ok"], body
        assert health["projections"]["entities"]["state"] == "running"
        assert health["backends"]["relay"]["status"] == "ok"
        status, text = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        for name in METRICS:
            assert name in text, name
        assert f"satellites_log_head_position {float(head)}" in text
        assert "satellites_log_pending_events 0.0" in text  # the relay leader numbers them
        assert 'satellites_projection_lag_events{projection="entities"} 0.0' in text
        more = asyncio.run(_append(config, 200))
        time.sleep(0.3)  # a batch may be in flight when SIGTERM lands
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # nothing half applied: the checkpoint is a batch boundary the sink fully holds; a restart
    # resumes from it and converges to the head
    restarted = run_cli(["rebuild", "entities"], cli_env)
    assert restarted.returncode == 0, restarted.stderr
    assert asyncio.run(_checkpoints(config))["entities"] >= more


def test_cli_exit_codes(cli_env: dict[str, str]) -> None:
    assert run_cli(["migrate"], cli_env).returncode == 0
    unknown = run_cli(["rebuild", "no_such_projection"], cli_env)
    assert unknown.returncode == 2 and "unknown projection" in unknown.stderr
    nothing_to_roll_back = run_cli(["rollback", "entities"], cli_env)
    assert nothing_to_roll_back.returncode == 1
    assert "no previous version" in nothing_to_roll_back.stderr
    first = run_cli(["rebuild", "entities"], cli_env)  # never run: builds version 1
    assert first.returncode == 0, first.stderr
    assert "version 1 is active" in first.stdout
    rebuilt = run_cli(["rebuild", "entities"], cli_env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "version 2 is active (previous 1)" in rebuilt.stdout
    assert "events/s" in rebuilt.stdout  # the progress bar
    rolled = run_cli(["rollback", "entities"], cli_env)
    assert rolled.returncode == 0 and "version 1 is active again" in rolled.stdout
    assert (
        run_cli(
            ["dlq", "list", "nobody"], {**cli_env, "SATELLITES_RABBITMQ_ENABLED": "false"}
        ).returncode
        != 0
    )
    assert run_cli(["no-such-command"], cli_env).returncode == 2
