"""Acceptance tests run the ``satellites-es`` command as a user does, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

import pytest

from tests.replica_support import s3  # noqa: F401  (the replica tests' S3 server)

CLI = [sys.executable, "-m", "satellites_es.cli"]


def run_cli(
    args: list[str], env: Mapping[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SATELLITES_")}
    full.update(env)
    full["COLUMNS"] = "200"
    return subprocess.run([*CLI, *args], env=full, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli_env(config_env: dict[str, str], es_url: str) -> dict[str, str]:
    """This test's isolated services, as SATELLITES_* variables, Elasticsearch included."""
    return {**config_env, "SATELLITES_ELASTICSEARCH_URL": es_url,
            "SATELLITES_ELASTICSEARCH_ENABLED": "true", "SATELLITES_FAISS_DIMENSION": "384"}  # fmt: skip
