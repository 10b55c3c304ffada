"""Values of the vector index: a match, and the settings that shape one namespace."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, Literal, get_args

from ..errors import VectorIndexError

__all__ = ["IndexKind", "Metric", "NamespaceSpec", "VectorMatch", "match_rows"]

Metric = Literal["cosine", "ip", "l2"]
IndexKind = Literal["flat", "hnsw", "ivf"]


@dataclass(frozen=True)
class VectorMatch:
    """One search hit; results are always sorted best first.

    ``score`` by metric: ``cosine`` is the cosine similarity in [-1, 1], higher is better;
    ``ip`` is the raw inner product, higher is better; ``l2`` is the *squared* Euclidean distance,
    lower is better (what FAISS computes; take the square root yourself if needed). A query
    answered in a batch (coalesced, or ``query_many``) is scored by a matrix product and may differ
    from the same query alone in the last bits of float32 (relative 1e-6), so at most the order
    of hits whose scores tie to that precision can differ.
    """

    id: str
    score: float
    metadata: Mapping[str, Any] | None = None


_new = object.__new__


def match_rows(
    scores: list[list[float]],
    labels: list[list[int]],
    entry: Callable[[int], tuple[str, dict[str, Any] | None] | None],
) -> list[list[VectorMatch]]:
    """A search's result rows: ``entry(label)`` gives a label's id and metadata, or None for a
    label to skip (FAISS pads a short row with -1). The metadata is handed out read-only.

    Each match's fields are written into its ``__dict__`` directly: the frozen dataclass's own
    ``__init__`` sets every field through ``object.__setattr__``, and that was most of a 10-hit
    row's cost, itself a large share of the query path around a fast HNSW search (BENCHMARKS.md,
    "Vectors on approximate indexes"). ``VectorMatch`` has no ``__post_init__`` for this to skip.
    """
    rows = []
    for row_scores, row_labels in zip(scores, labels, strict=True):
        hits = []
        for score, label in zip(row_scores, row_labels, strict=True):
            found = entry(label)
            if found is not None:
                hit = _new(VectorMatch)
                fields = hit.__dict__
                fields["id"] = found[0]
                fields["score"] = score
                meta = found[1]
                fields["metadata"] = None if meta is None else MappingProxyType(meta)
                hits.append(hit)
        rows.append(hits)
    return rows


@dataclass(frozen=True)
class NamespaceSpec:
    """What a namespace is built from; stored in its manifest and fixed for its lifetime.

    ``hnsw_m``, ``ef_construction``, ``ef_search`` tune HNSW; ``nlist`` and ``nprobe`` tune IVF
    (which trains once the namespace holds ``nlist * 39`` vectors, see :mod:`.namespace`).
    """

    name: str
    dimension: int
    metric: Metric = "cosine"
    index_kind: IndexKind = "flat"
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 64
    nlist: int = 64
    nprobe: int = 8

    def __post_init__(self) -> None:
        if self.metric not in get_args(Metric):
            raise VectorIndexError(f"unknown metric {self.metric!r}; use cosine, ip or l2")
        if self.index_kind not in get_args(IndexKind):
            raise VectorIndexError(f"unknown index kind {self.index_kind!r}; use flat, hnsw or ivf")
        numbers = (self.dimension, self.hnsw_m, self.ef_construction, self.ef_search)
        if min(*numbers, self.nlist, self.nprobe) < 1:
            raise VectorIndexError(f"namespace {self.name}: sizes must be positive")

    @property
    def train_size(self) -> int:
        """Vectors an IVF namespace buffers before it trains (FAISS wants ~39 per centroid)."""
        return self.nlist * 39

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NamespaceSpec:
        return cls(**dict(data))
