"""Snapshots: round trips, verified loads, and a save killed with SIGKILL at random moments."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from satellites_es.config import FaissConfig
from satellites_es.errors import CorruptIndexError, NamespaceNotFoundError
from satellites_es.vectors import VectorIndex
from satellites_es.vectors.persistence import CURRENT, INDEX_FILE, MANIFEST_FILE, META_FILE

DIM = 16


def _config(root: Path) -> FaissConfig:
    return FaissConfig(index_path=root, dimension=DIM)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "faiss"


async def _reopen(root: Path) -> VectorIndex:
    vi = VectorIndex(_config(root))
    await vi.open()
    return vi


def _data(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


async def _fill(index: VectorIndex, name: str, n: int = 600) -> np.ndarray:
    data = _data(n)
    items = [(f"v{i}", v, {"i": i, "tag": ["x", i % 5]}) for i, v in enumerate(data)]
    await index.upsert_many(name, items, positions=list(range(1, n + 1)))
    for i in range(0, n, 3):
        await index.delete(name, f"v{i}", position=n + i + 1)
    return data


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize(("kind", "n"), [("flat", 600), ("hnsw", 600), ("ivf", 600), ("ivf", 50)])
async def test_round_trip(root: Path, index: VectorIndex, metric: Any, kind: Any, n: int) -> None:
    await index.create_namespace("ns", metric=metric, index_kind=kind, nlist=4)
    data = await _fill(index, "ns", n)
    queries = data[:20] + 0.01
    before = await index.query_many("ns", queries, 10)
    stats = index.stats()["namespaces"]["ns"]
    await index.save()
    assert index.stats()["namespaces"]["ns"]["dirty"] is False
    reopened = await _reopen(root)
    try:
        assert await reopened.query_many("ns", queries, 10) == before
        after = reopened.stats()["namespaces"]["ns"]
        assert {k: after[k] for k in ("count", "ntotal", "tombstones", "trained", "metric")} == {
            k: stats[k] for k in ("count", "ntotal", "tombstones", "trained", "metric")
        }
        assert reopened.applied_position("ns") == index.applied_position("ns")
        stored = await reopened.get("ns", "v1")
        assert stored is not None and stored[1] == {"i": 1, "tag": ["x", 1]}
        await reopened.upsert("ns", "v3", data[3], position=n + 3)  # tombstone kept: ignored
        assert await reopened.get("ns", "v3") is None
    finally:
        await reopened.close()


async def test_save_keeps_one_snapshot_and_a_current_pointer(
    root: Path, index: VectorIndex
) -> None:
    await _fill(index, "ns", 50)
    for _ in range(3):
        await index.upsert("ns", "extra", _data(1)[0])
        await index.save("ns")
    (root / "ns" / ".tmp-000000099-stale").mkdir()  # left by a killed save
    await index.upsert("ns", "more", _data(1)[0])
    await index.save()
    names = sorted(p.name for p in (root / "ns").iterdir())
    assert names == [CURRENT, "snapshot-000000100"]
    assert sorted(p.name for p in (root / "ns" / names[1]).iterdir()) == sorted(
        [INDEX_FILE, MANIFEST_FILE, META_FILE]
    )


async def test_load_replaces_memory_and_drop_removes_files(root: Path, index: VectorIndex) -> None:
    await index.upsert("ns", "a", _data(1)[0])
    await index.save()
    await index.upsert("ns", "b", _data(1, seed=2)[0])
    await index.load("ns")
    assert await index.count("ns") == 1
    with pytest.raises(NamespaceNotFoundError):
        await index.load("never-saved")
    assert await index.drop_namespace("ns") is True
    assert not (root / "ns").exists()
    assert await (await _reopen(root)).namespaces() == []


# ---- corrupt, truncated and mismatched files ----------------------------------------------


def _snapshot_dir(root: Path, name: str = "ns") -> Path:
    return root / name / (root / name / CURRENT).read_text().split()[0]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _rehash(snap: Path) -> None:
    """Make the manifest and CURRENT agree with whatever files are there (a consistent lie)."""
    import hashlib

    manifest = json.loads((snap / MANIFEST_FILE).read_bytes())
    for name in (INDEX_FILE, META_FILE):
        data = (snap / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    raw = json.dumps(manifest).encode()
    (snap / MANIFEST_FILE).write_bytes(raw)
    (snap.parent / CURRENT).write_text(f"{snap.name} {hashlib.sha256(raw).hexdigest()}\n")


def _swap_index_from_other(root: Path) -> None:
    snap = _snapshot_dir(root)
    shutil.copy(_snapshot_dir(root, "other") / INDEX_FILE, snap / INDEX_FILE)
    _rehash(snap)


def _swap_meta_from_other(root: Path) -> None:
    snap = _snapshot_dir(root)
    shutil.copy(_snapshot_dir(root, "other") / META_FILE, snap / META_FILE)
    _rehash(snap)


def _copy_whole_namespace_from_other(root: Path) -> None:
    shutil.rmtree(root / "ns")
    shutil.copytree(root / "other", root / "ns")


def _drop_one_label(root: Path) -> None:
    snap = _snapshot_dir(root)
    meta = json.loads((snap / META_FILE).read_bytes())
    meta["entries"][0][0] = 10**9  # a label the index does not hold
    (snap / META_FILE).write_bytes(json.dumps(meta).encode())
    _rehash(snap)


DAMAGE: list[tuple[str, Callable[[Path], None], str]] = [
    ("truncated index", lambda r: _truncate(_snapshot_dir(r) / INDEX_FILE), INDEX_FILE),
    ("flipped index byte", lambda r: _flip_byte(_snapshot_dir(r) / INDEX_FILE), INDEX_FILE),
    ("truncated metadata", lambda r: _truncate(_snapshot_dir(r) / META_FILE), META_FILE),
    ("flipped metadata byte", lambda r: _flip_byte(_snapshot_dir(r) / META_FILE), META_FILE),
    ("truncated manifest", lambda r: _truncate(_snapshot_dir(r) / MANIFEST_FILE), MANIFEST_FILE),
    ("missing index", lambda r: (_snapshot_dir(r) / INDEX_FILE).unlink(), INDEX_FILE),
    ("garbage CURRENT", lambda r: (r / "ns" / CURRENT).write_text("../../etc"), CURRENT),
    ("empty CURRENT", lambda r: (r / "ns" / CURRENT).write_text(""), CURRENT),
    ("index of another namespace", _swap_index_from_other, INDEX_FILE),
    ("metadata of another namespace", _swap_meta_from_other, META_FILE),
    ("whole snapshot of another namespace", _copy_whole_namespace_from_other, MANIFEST_FILE),
    ("label not in the index", _drop_one_label, META_FILE),
]


@pytest.mark.parametrize(("what", "damage", "named"), DAMAGE, ids=[d[0] for d in DAMAGE])
async def test_damaged_snapshot_raises_corrupt_index_error_naming_the_file(
    root: Path, what: str, damage: Callable[[Path], None], named: str
) -> None:
    vi = await _reopen(root)
    await _fill(vi, "ns", 300)
    await vi.create_namespace("other", index_kind="hnsw")
    await _fill(vi, "other", 200)
    await vi.save()
    damage(root)
    with pytest.raises(CorruptIndexError) as raised:
        await vi.load("ns")
    assert raised.value.path.endswith(named), raised.value
    assert named in str(raised.value)
    assert await vi.count("ns") == 200  # the in-memory namespace was not replaced
    await vi.close()
    fresh = VectorIndex(_config(root))
    with pytest.raises(CorruptIndexError, match=named):
        await fresh.open()  # never serves an empty or wrong namespace


# ---- SIGKILL during save --------------------------------------------------------------------

SAVER = textwrap.dedent(
    """
    import asyncio, sys
    import numpy as np
    from pathlib import Path
    from satellites_es.config import FaissConfig
    from satellites_es.vectors import VectorIndex

    N, DIM = 10_000, 32
    base = np.random.default_rng(7).normal(size=(N, DIM)).astype(np.float32)

    async def main() -> None:
        vi = VectorIndex(FaissConfig(index_path=Path(sys.argv[1]), dimension=DIM, metric="l2"))
        await vi.open()
        start = vi.applied_position("big") or 0
        for r in range(start + 1, 10**6):
            items = [(f"v{i}", base[i] + r, {"round": r}) for i in range(N)]
            await vi.upsert_many("big", items, positions=[r] * N)
            await vi.save("big")
            print(r, flush=True)

    asyncio.run(main())
    """
)


def _run_saver_and_kill(root: Path, rng: random.Random) -> int:
    """Start the saver, let it save at least once, SIGKILL it at a random moment."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.strip(), "the saver died before its first save"
    time.sleep(rng.uniform(0.0, 0.6))
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return int(([first, *rest.split()])[-1])


async def test_sigkill_during_save_leaves_a_loadable_snapshot(root: Path) -> None:
    rng = random.Random()
    base = np.random.default_rng(7).normal(size=(10_000, 32)).astype(np.float32)
    for _ in range(3):
        last_reported = _run_saver_and_kill(root, rng)
        vi = VectorIndex(FaissConfig(index_path=root, dimension=32, metric="l2"))
        await vi.open()
        try:
            r = vi.applied_position("big")
            assert r is not None and r >= last_reported  # reported saves are durable
            assert await vi.count("big") == 10_000
            hits = await vi.query_many("big", base[:50] + r, 1)
            assert [h[0].id for h in hits] == [f"v{i}" for i in range(50)]
            assert all(h[0].score < 1e-3 and h[0].metadata == {"round": r} for h in hits)
            await _assert_one_round(vi, r)
        finally:
            await vi.close()


async def _assert_one_round(vi: VectorIndex, r: int) -> None:
    """Every vector's metadata comes from the same round: one complete snapshot, not a mix."""
    for i in range(0, 10_000, 499):
        stored = await vi.get("big", f"v{i}")
        assert stored is not None and stored[1] == {"round": r}


def _plant_foreign_dirs(root: Path) -> None:
    for name in ("bad name", ".hidden"):
        (root / name).mkdir(parents=True)
        (root / name / CURRENT).write_text("snapshot-000000001 " + "0" * 64 + "\n")


async def test_directories_we_could_not_have_written_are_ignored(root: Path) -> None:
    _plant_foreign_dirs(root)
    vi = await _reopen(root)
    try:
        assert await vi.namespaces() == []
    finally:
        await vi.close()


@pytest.mark.parametrize("filtered_before_save", [False, True])
async def test_filters_answer_from_a_loaded_snapshot(
    index: VectorIndex, tmp_path: Path, filtered_before_save: bool
) -> None:
    """The filter index is not saved: a loaded namespace indexes a key on its first filter."""
    rng = np.random.default_rng(2)
    metas = [{"lang": ["en", "de", "fr"][i % 3], "n": i} for i in range(300)]
    await index.upsert_arrays("ns", [f"v{i}" for i in range(300)], rng.normal(size=(300, DIM)),
                              metas)  # fmt: skip
    if filtered_before_save:
        await index.query("ns", rng.normal(size=DIM), 5, filter={"lang": "de"})
    await index.save()
    async with VectorIndex(FaissConfig(index_path=tmp_path / "faiss", dimension=DIM)) as loaded:
        hits = await loaded.query("ns", rng.normal(size=DIM), 300, filter={"lang": "de"})
        assert sorted(h.id for h in hits) == sorted(f"v{i}" for i in range(1, 300, 3))
        await loaded.upsert("ns", "v1", rng.normal(size=DIM), {"lang": "en"})
        hits = await loaded.query("ns", rng.normal(size=DIM), 300, filter={"lang": "de"})
        assert len(hits) == 99 and "v1" not in {h.id for h in hits}
