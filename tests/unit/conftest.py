"""Unit fixtures: an open VectorIndex of the test module's ``DIM`` in the test's own directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from satellites_es.config import FaissConfig
from satellites_es.vectors import VectorIndex


@pytest.fixture
async def index(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[VectorIndex]:
    vi = VectorIndex(FaissConfig(index_path=tmp_path / "faiss", dimension=request.module.DIM))
    await vi.open()
    yield vi
    await vi.close()
