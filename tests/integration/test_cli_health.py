"""``satellites-es health`` against the real services: exit codes and what it prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from satellites_es.testing.services import free_port

CLI = [sys.executable, "-m", "satellites_es.cli"]


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SATELLITES_")}
    full.update(env)
    full["COLUMNS"] = "200"
    return subprocess.run([*CLI, "health"], env=full, capture_output=True, text=True, timeout=60)


def test_health_exits_zero_when_everything_answers(config_env: dict[str, str], es_url: str) -> None:
    result = _run(
        {
            **config_env,
            "SATELLITES_ELASTICSEARCH_URL": es_url,
            "SATELLITES_ELASTICSEARCH_ENABLED": "true",
        }
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("postgres", "redis", "elasticsearch", "faiss", "rabbitmq"):
        assert name in result.stdout
    assert "down" not in result.stdout


def test_health_names_an_unreachable_redis_and_exits_one(config_env: dict[str, str]) -> None:
    result = _run(
        {**config_env, "SATELLITES_REDIS_PORT": str(free_port()), "SATELLITES_CONNECT_TIMEOUT": "1"}
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "redis" in result.stderr
    assert "unhealthy: redis" in result.stderr
    lines = [line for line in result.stdout.splitlines() if "redis" in line]
    assert lines and "down" in lines[0]
    assert any("postgres" in line and "ok" in line for line in result.stdout.splitlines())


def test_bad_configuration_exits_two(tmp_path: Path) -> None:
    result = _run({"SATELLITES_REDIS_PORT": "not-a-port"})
    assert result.returncode == 2
    assert "SATELLITES_REDIS_PORT" in result.stderr
