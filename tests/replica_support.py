"""What the replica tests share: an S3-compatible server per test (the ``s3`` fixture, which the
integration and acceptance conftests import), a client of the bucket that is not ours, embedding
events, and the log folded key by key to compare a replica with."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from obstore.store import S3Store

from satellites_es.events import DataEvent
from satellites_es.store import EventStore
from satellites_es.testing.s3 import AWS_ENV, S3Server
from satellites_es.vectors import VectorIndex
from satellites_es.vectors.codec import decode_vector, encode_vector

DIM = 384
NAMESPACE = "embeddings_v1"  # the demo's embeddings projection, version 1


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A moto server of this test's own on a free port, stopped afterwards; this process's
    client finds the dummy credentials in the environment, as the standard chain reads them."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


def raw_store(url: str, endpoint: str) -> S3Store:
    """``s3://bucket/prefix`` on the server at ``endpoint`` through obstore directly, not
    through :class:`~satellites_es.vectors.snapshot_store.SnapshotStore`: to list what the
    store holds, or damage an object, without going through the code under test."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return S3Store(bucket, prefix=prefix or None, endpoint=endpoint,
                   virtual_hosted_style_request=False, client_options={"allow_http": True})  # fmt: skip


def embedding_events(rng: random.Random, n: int, keys: int) -> list[DataEvent]:
    """Upserts of ``keys`` keys (some written several times) and a few deletes."""
    out = []
    for _ in range(n):
        key = f"e{rng.randrange(keys)}"
        if rng.random() < 0.05:
            out.append(DataEvent(type="embedding.deleted", resource="embeddings", key=key,
                                 payload={}, source="test"))  # fmt: skip
            continue
        vector = np.asarray([rng.gauss(0, 1) for _ in range(DIM)], dtype=np.float32)
        payload = {"vector": encode_vector(vector), "title": f"{key} {rng.random():.6f}",
                   "topic": rng.choice(("a", "b", "c")), "model": "test"}  # fmt: skip
        out.append(DataEvent(type="embedding.upserted", resource="embeddings", key=key,
                             payload=payload, source="test"))  # fmt: skip
    return out


async def log_fold(store: EventStore) -> dict[str, tuple[np.ndarray, dict[str, Any]] | None]:
    """What the log says each key holds: its last event's vector and metadata, or None."""
    fold: dict[str, tuple[np.ndarray, dict[str, Any]] | None] = {}
    head = await store.head()
    async for batch in store.read(after=0, until=head, batch_size=1000):
        for e in batch:
            if e.type == "embedding.deleted":
                fold[e.key] = None
            elif e.type == "embedding.upserted":
                meta = {k: e.payload[k] for k in ("title", "topic", "model")}
                fold[e.key] = (decode_vector(e.payload["vector"]), meta)
    return fold


async def assert_matches_log(
    vectors: VectorIndex, namespace: str, fold: dict[str, tuple[np.ndarray, dict[str, Any]] | None]
) -> None:
    """Key by key: every live key of the log with its vector (unit length: cosine) and
    metadata, no other key."""
    live = {k: v for k, v in fold.items() if v is not None}
    held = await vectors.ids(namespace)
    assert sorted(held) == sorted(live), (
        f"missing {sorted(set(live) - set(held))[:5]}, extra {sorted(set(held) - set(live))[:5]}"
    )
    for key, (vector, meta) in live.items():
        got = await vectors.get(namespace, key)
        assert got is not None, key
        want = vector / np.linalg.norm(vector)
        assert np.allclose(got[0], want, rtol=1e-5, atol=1e-6), key
        assert dict(got[1] or {}) == meta, key
