"""Values of the vector index: a match, and the settings that shape one namespace."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from ..errors import VectorIndexError

__all__ = ["IndexKind", "Metric", "NamespaceSpec", "VectorMatch", "match_rows"]

Metric = Literal["cosine", "ip", "l2"]
IndexKind = Literal["flat", "hnsw", "ivf"]


@dataclass(frozen=True, slots=True)
class VectorMatch:
    """One search hit; results are always sorted best first.

    ``score`` by metric: ``cosine`` is the cosine similarity in [-1, 1], higher is better;
    ``ip`` is the raw inner product, higher is better; ``l2`` is the *squared* Euclidean distance,
    lower is better (what FAISS computes; take the square root yourself if needed). A query
    answered in a batch (coalesced, or ``query_many``) is scored by a matrix product and may differ
    from the same query alone in the last bits of float32 (relative 1e-6), so at most the order
    of hits whose scores tie to that precision can differ. ``metadata`` is read-only.
    """

    id: str
    score: float
    metadata: Mapping[str, Any] | None = None


_new = object.__new__
# the slots' own descriptors: a frozen dataclass refuses ``setattr``, its ``__init__`` goes
# through ``object.__setattr__`` per field
_set_id, _set_score, _set_metadata = (
    vars(VectorMatch)[f].__set__ for f in ("id", "score", "metadata")
)


def match_rows(
    scores: list[list[float]],
    labels: list[list[int]],
    entry: Callable[[int], tuple[str, Mapping[str, Any] | None] | None],
) -> list[list[VectorMatch]]:
    """A search's result rows: ``entry(label)`` gives a label's id and its read-only metadata,
    or None for a label to skip (FAISS pads a short row with -1).

    Built for what a hit costs around a fast HNSW search, where rows were a large share of the
    query path (BENCHMARKS.md, "Vectors on approximate indexes"): each match is one allocation
    (``slots``, no ``__dict__``), its fields written through the slot descriptors (``__init__``
    would set each through ``object.__setattr__``), and its metadata is the namespace's own
    read-only view, shared by every hit of that vector rather than wrapped per hit. Allocations
    that the garbage collector tracks are what it counts to decide when to collect, so three per
    hit (object, ``__dict__``, wrapper) made collections three times as frequent.
    """
    rows = []
    for row_scores, row_labels in zip(scores, labels, strict=True):
        hits = []
        for score, label in zip(row_scores, row_labels, strict=True):
            found = entry(label)
            if found is not None:
                hit = _new(VectorMatch)
                _set_id(hit, found[0])
                _set_score(hit, score)
                _set_metadata(hit, found[1])
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
