"""One namespace: a FAISS index, the string-id map, metadata and per-id positions.

Synchronous and not thread-safe on its own: :class:`~.index.VectorIndex` calls it from worker
threads, searches under a shared lock and writes under an exclusive one (FAISS allows concurrent
searches, but an add or remove must run alone: faiss #367, #1504).

Ids. Every stored vector gets a fresh int64 *label* (a counter that never goes back); the
namespace maps ``id -> label`` and ``label -> (id, metadata)``. An upsert of a known id adds the
new vector under a new label, then removes the old label: ``add_with_ids`` would happily keep
both (faiss #508), and there is never a moment with two live labels for one id.

Deletes, per index kind.

* ``flat``: ``IndexIDMap2(IndexFlat*)``; ``remove_ids`` compacts the arrays, so memory follows the
  live count.
* ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)``; HNSW has no ``remove_ids`` (faiss #3339). A deleted
  label becomes a *tombstone*: it leaves the id map at once and searches exclude it with an
  ``IDSelectorNot(IDSelectorBatch(tombstones))``. When tombstones exceed
  ``max(COMPACT_MIN, COMPACT_FRACTION * ntotal)`` the graph is rebuilt from the live vectors, so
  memory stays within a constant factor of the live count.
* ``ivf``: untrained, the namespace is a flat ``IndexIDMap2`` buffer (exact results). Once it holds
  ``nlist * 39`` live vectors (FAISS warns below 39 points per centroid) it trains an
  ``IVF<nlist>,Flat`` on them and moves them in; from then on ``remove_ids`` works natively (with a
  hash-table direct map, so ``get`` can reconstruct by label). IVF never retrains on its own.

Searches. A batch of :data:`~.exact.MIN_QUERIES` or more unfiltered queries on a flat index is
scored by :mod:`.exact` (numpy's BLAS on FAISS's own storage, several times faster than the
wheel's); single queries, filtered queries and HNSW/IVF go to FAISS.

Approximate kinds may return fewer than ``k`` hits under a selective filter (a filtered HNSW walk
can strand itself, IVF probes only ``nprobe`` lists); such rows are answered again by an exact
scan over the candidate labels, so a query returns ``top_k`` hits whenever that many match.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import VectorIndexError
from . import exact
from ._faiss import faiss
from .filters import MetadataIndex, filter_key
from .models import NamespaceSpec, VectorMatch, match_rows
from .plans import PlanCache, SearchPlan, batch_selector, excluding

__all__ = [
    "COMPACT_FRACTION", "COMPACT_MIN", "INLINE_MAX_WORK", "Namespace", "NamespaceState", "Stored",
    "frozen",
]  # fmt: skip

logger = logging.getLogger(__name__)

COMPACT_FRACTION = 0.25
COMPACT_MIN = 64
#: Batches at least this large are added to FAISS in a helper thread, beside the bookkeeping.
OVERLAP_MIN = 1024
#: A search estimated at most this many multiply-adds may run on the event loop:
#: a thread hop and its wake-ups cost more than a small HNSW or IVF search itself.
INLINE_MAX_WORK = 2_000_000
_UNSET: Any = object()

Labels = npt.NDArray[np.int64]
Matrix = npt.NDArray[np.float32]
FilterKey = tuple[Any, ...]
Meta = dict[str, Any] | None
#: Metadata as a namespace holds it: a read-only view of its own copy, made once when it is
#: written, so that every match of a search hands out the same view instead of wrapping the
#: metadata per hit (a wrapper per hit is a GC-tracked allocation; see ``match_rows``).
Stored = Mapping[str, Any] | None


@contextmanager
def faiss_errors(what: str) -> Iterator[None]:
    """FAISS reports misuse as RuntimeError (C++ exceptions) or AssertionError (its wrapper)."""
    try:
        yield
    except (RuntimeError, AssertionError) as exc:
        raise VectorIndexError(f"faiss failed to {what}: {exc}") from exc


def _faiss_metric(spec: NamespaceSpec) -> int:
    return int(faiss.METRIC_L2 if spec.metric == "l2" else faiss.METRIC_INNER_PRODUCT)


def new_index(spec: NamespaceSpec) -> Any:
    """An empty index of the namespace's kind (for ``ivf``: the untrained flat buffer)."""
    metric = _faiss_metric(spec)
    if spec.index_kind == "hnsw":
        inner = faiss.IndexHNSWFlat(spec.dimension, spec.hnsw_m, metric)
        inner.hnsw.efConstruction = spec.ef_construction
    elif metric == faiss.METRIC_L2:
        inner = faiss.IndexFlatL2(spec.dimension)
    else:
        inner = faiss.IndexFlatIP(spec.dimension)
    return faiss.IndexIDMap2(inner)


def _trained_ivf(spec: NamespaceSpec, vectors: Matrix) -> Any:
    # index_factory owns its quantizer (a hand-built quantizer can be garbage collected)
    index = faiss.index_factory(spec.dimension, f"IVF{spec.nlist},Flat", _faiss_metric(spec))
    index.train(vectors)
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    return index


def _stored(index: Any) -> tuple[Labels, Matrix]:
    """Every label and vector physically held by an ``IndexIDMap2`` (tombstones included)."""
    labels = faiss.vector_to_array(index.id_map).astype(np.int64)
    vectors = index.index.reconstruct_n(0, index.ntotal) if index.ntotal else None
    if vectors is None:
        vectors = np.empty((0, index.d), dtype=np.float32)
    return labels, np.ascontiguousarray(vectors, dtype=np.float32)


@dataclass
class NamespaceState:
    """What a snapshot holds besides the FAISS index (see :mod:`.persistence`)."""

    entries: dict[int, tuple[str, Stored]]
    positions: dict[str, int]
    tombstones: set[int]
    next_label: int
    applied_position: int | None
    trained: bool
    #: id -> label of ``entries``, when the loader built it already (off the event loop)
    label_of: dict[str, int] | None = None


class Namespace:
    def __init__(self, spec: NamespaceSpec, index: Any = None, state: NamespaceState | None = None):
        self.spec = spec
        self._index = new_index(spec) if index is None else index
        state = state or NamespaceState({}, {}, set(), 0, None, False)
        self._entries = state.entries
        self._positions = state.positions
        self._dead = state.tombstones
        self._next_label = state.next_label
        self.applied_position = state.applied_position
        self._trained = state.trained
        label_of = state.label_of
        self._label_of: dict[str, int] = (
            label_of
            if label_of is not None
            else {vector_id: label for label, (vector_id, _) in self._entries.items()}
        )
        self._filters = MetadataIndex()  # keys are indexed when a filter first uses them
        self._plans = PlanCache()  # selectors and search parameters, rebuilt after a write
        self._norms: tuple[int, Matrix] | None = None
        #: Bumped by every write; a save records the version it captured (dirty tracking).
        self.version = 0

    # ---- reads ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def tombstones(self) -> int:
        return len(self._dead)

    @property
    def trained(self) -> bool:
        return self._trained

    def position_of(self, vector_id: str) -> int | None:
        return self._positions.get(vector_id)

    def ids(self) -> list[str]:
        """The ids of the live vectors, sorted."""
        return sorted(self._label_of)

    def get(self, vector_id: str) -> tuple[Matrix, Mapping[str, Any] | None] | None:
        label = self._label_of.get(vector_id)
        if label is None:
            return None
        with faiss_errors("reconstruct a vector"):
            vector = np.asarray(self._index.reconstruct(label), dtype=np.float32)
        return vector, self._entries[label][1]

    def search(
        self, queries: Matrix, k: int, flt: Mapping[str, Any] | None = None
    ) -> list[list[VectorMatch]]:
        """Best-first hits for each row of ``queries`` (already validated and normalised)."""
        key = filter_key(flt)
        plan = self._plans.build(key, self.version, functools.partial(self._plan, key))
        rows, k_eff = self._answer(queries, k, plan)
        short = [i for i, row in enumerate(rows) if len(row) < k_eff]
        if short:
            self._exact_rows(queries, k_eff, plan.allowed, short, rows)
        return rows

    def search_inline(
        self, queries: Matrix, k: int, flt: Mapping[str, Any] | None = None
    ) -> list[list[VectorMatch]] | None:
        """``search`` for the event loop: an answer only when it is cheap (the filter's plan is
        built, the estimated work is at most :data:`INLINE_MAX_WORK`, no row needs the exact
        fallback), else None, and a worker thread answers instead.

        It searches with an OpenMP team of one on the calling thread, then gives the thread its
        width back. A search this small has nothing to share out (HNSW and IVF split a batch by
        query, and this is usually one), yet ``IndexIDMap`` maps the labels in a parallel loop,
        so at the default width every query wakes the thread's team and waits for it, many
        times the search itself under load; FAISS calls at the default width on the same thread
        were no slower for the switch (BENCHMARKS.md, issue 21, third pass)."""
        plan = self._plans.get(filter_key(flt), self.version)
        if plan is None or self._work(len(queries), plan) > INLINE_MAX_WORK:
            return None
        width = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            rows, k_eff = self._answer(queries, k, plan)
        finally:
            faiss.omp_set_num_threads(width)
        return None if any(len(row) < k_eff for row in rows) else rows

    def _answer(
        self, queries: Matrix, k: int, plan: SearchPlan
    ) -> tuple[list[list[VectorMatch]], int]:
        k_eff = min(k, plan.candidates)
        if k_eff == 0:
            return [[] for _ in range(len(queries))], 0
        with faiss_errors("search"):
            scores, labels = self._faiss_search(queries, k_eff, plan)
        return self._rows(scores, labels), k_eff

    def _plan(self, key: FilterKey) -> SearchPlan:
        if key:
            allowed = self._filters.match(key, self._metadata)
            return SearchPlan(allowed, len(allowed), batch_selector(allowed))
        if not self._dead:
            return SearchPlan(None, len(self._entries), None)
        selector, inner = excluding(self._dead)  # HNSW's tombstones
        return SearchPlan(None, len(self._entries), selector, keep=(inner,))

    def _work(self, nq: int, plan: SearchPlan) -> int:
        """Multiply-adds a search of ``nq`` queries is expected to cost: an estimate, only to
        choose where it runs. HNSW computes ~``ef * M`` distances a query (about twice that
        under a filter, whose misses it walks through); IVF scans the centroids and ``nprobe``
        lists; flat scans everything, or under a filter probes each label's selector (~8) and
        scores the allowed ones."""
        spec = self.spec
        if spec.index_kind == "hnsw":
            per = spec.ef_search * spec.hnsw_m * spec.dimension * (1 if plan.allowed is None else 2)
        elif self._trained:
            per = (spec.nlist + spec.nprobe * self.ntotal // spec.nlist) * spec.dimension
        elif plan.allowed is None:
            per = self.ntotal * spec.dimension
        else:
            per = plan.candidates * spec.dimension + self.ntotal * 8
        return nq * per

    def _metadata(self) -> Iterator[tuple[int, Stored]]:
        return ((label, meta) for label, (_, meta) in self._entries.items())

    # ---- writes (exclusive) --------------------------------------------------------------

    def admit(self, vector_id: str, position: int | None) -> bool:
        """Whether a write at ``position`` is newer than the last one applied to this id."""
        if position is None:
            return True
        stored = self._positions.get(vector_id)
        return stored is None or position > stored

    def record_position(self, vector_id: str, position: int | None) -> None:
        if position is None:
            return
        self._positions[vector_id] = position
        self.version += 1
        if self.applied_position is None or position > self.applied_position:
            self.applied_position = position

    def apply_upserts(
        self,
        ids: Sequence[str],
        vectors: Matrix,
        metas: Sequence[Meta],
        positions: Sequence[int] | None,
    ) -> int:
        """Apply a validated batch in order; returns how many items were not stale.

        With positions, an item at or below the last position applied to its id (an earlier
        item of the same batch included) is skipped. Within a batch the last item per id wins.
        """
        if positions is None and len(set(ids)) == len(ids):  # distinct ids: every row, no copy
            self.upsert(ids, vectors, metas)
            return len(ids)
        if positions is None:
            chosen = dict(zip(ids, range(len(ids)), strict=True))  # the last row per id wins
            latest: dict[str, int] = {}
            admitted = len(ids)
        else:
            chosen, latest, admitted = self._admitted(ids, positions)
        if chosen:
            rows = list(chosen.values())
            if len(rows) == len(ids):
                self.upsert(ids, vectors, metas)  # every row, distinct ids: no copy
            else:
                self.upsert(list(chosen), vectors[rows], [metas[r] for r in rows])
        if latest:  # record_position for each, at C speed
            self._positions.update(latest)
            self.version += 1
            top = max(latest.values())
            if self.applied_position is None or top > self.applied_position:
                self.applied_position = top
        return admitted

    def _admitted(
        self, ids: Sequence[str], positions: Sequence[int]
    ) -> tuple[dict[str, int], dict[str, int], int]:
        """Rows to apply (id -> row, the last admitted one), new positions, items admitted."""
        latest: dict[str, int] = {}
        chosen: dict[str, int] = {}
        admitted = 0
        for row, (vector_id, position) in enumerate(zip(ids, positions, strict=True)):
            stored = latest.get(vector_id, self._positions.get(vector_id))
            if stored is not None and position <= stored:
                continue
            latest[vector_id] = position
            chosen[vector_id] = row
            admitted += 1
        return chosen, latest, admitted

    def apply_delete(self, vector_id: str, position: int | None) -> bool:
        """Delete one id unless the write is stale; a positioned delete leaves a tombstone."""
        if not self.admit(vector_id, position):
            return False
        deleted = self.delete([vector_id]) > 0
        self.record_position(vector_id, position)
        return deleted

    def upsert(self, ids: Sequence[str], vectors: Matrix, metas: Sequence[Meta]) -> None:
        """Store distinct ``ids`` (the caller dedupes), replacing any previous vector.

        On flat storage a known id's vector is overwritten where it lies, under its label: no
        ``remove_ids``, which compacts the whole index on every call (a replay that replaced
        most ids spent a seventh of its time there). New ids are added; FAISS copies a large
        batch in a helper thread (it releases the GIL) while this thread updates the id maps,
        so the bookkeeping costs no extra time; if the add fails, the maps are put back as they
        were and nothing was overwritten.
        """
        known = self._label_of.keys() & ids  # C-speed; usually empty (new ids)
        in_place = self._stored_rows(ids, known) if known and self._flat else None
        if in_place is None:
            self._add(ids, vectors, metas, known)
        else:
            rows, labels, slots = in_place
            fresh = [row for row, vector_id in enumerate(ids) if vector_id not in known]
            if fresh:  # appended after the stored ones: the slots stay valid
                self._add([ids[r] for r in fresh], vectors[fresh], [metas[r] for r in fresh], ())
            self._overwrite(
                [ids[r] for r in rows], vectors[rows], [metas[r] for r in rows], labels, slots
            )
        self.version += 1
        self._maybe_train()
        self._maybe_compact()

    def _add(
        self, ids: Sequence[str], vectors: Matrix, metas: Sequence[Meta], known: Collection[str]
    ) -> None:
        """Add ``ids`` under new labels; the ``known`` ones lose their old label afterwards."""
        labels = np.arange(self._next_label, self._next_label + len(ids), dtype=np.int64)
        replaced = {vector_id: self._label_of[vector_id] for vector_id in known}
        adding = _started(self._index.add_with_ids, vectors, labels, alone=len(ids) < OVERLAP_MIN)
        label_list = labels.tolist()
        stored = frozen(metas)
        self._entries.update(zip(label_list, zip(ids, stored, strict=True), strict=True))
        self._label_of.update(zip(ids, label_list, strict=True))
        try:
            with faiss_errors("add vectors"):
                adding()
        except BaseException:
            for label in label_list:
                del self._entries[label]
            for vector_id in ids:
                del self._label_of[vector_id]
            self._label_of.update(replaced)
            raise
        self._next_label += len(ids)
        self._forget(list(replaced.values()))
        if self._filters.keys:
            for label, meta in zip(label_list, stored, strict=True):
                self._filters.add(label, meta)

    def _stored_rows(
        self, ids: Sequence[str], known: Collection[str]
    ) -> tuple[list[int], list[int], Labels] | None:
        """The batch rows of ``known`` ids, their labels and the storage slots of those, or None when
        the id map is not in label order (never seen: adds append rising labels and
        ``remove_ids`` keeps the order; then the remove-and-add path runs)."""
        rows = [row for row, vector_id in enumerate(ids) if vector_id in known]
        labels = [self._label_of[ids[r]] for r in rows]
        wanted = np.array(labels, np.int64)
        _, stored = exact.flat_storage(self._index)
        slots = np.searchsorted(stored, wanted)
        if not (slots < len(stored)).all() or not (stored[slots] == wanted).all():
            return None
        return rows, labels, slots

    def _overwrite(
        self,
        ids: list[str],
        vectors: Matrix,
        metas: Sequence[Meta],
        labels: list[int],
        slots: Labels,
    ) -> None:
        """Write known ids' new vectors and metadata in place (cannot fail half-way)."""
        storage, _ = exact.flat_storage(self._index)  # again: an add may have moved it
        storage[slots] = vectors
        stored = frozen(metas)
        if self._filters.keys:
            for label, meta in zip(labels, stored, strict=True):
                self._filters.remove(label, self._entries[label][1])
                self._filters.add(label, meta)
        self._entries.update(zip(labels, zip(ids, stored, strict=True), strict=True))

    def retune(self, spec: NamespaceSpec) -> None:
        """Take a spec differing only in search-time settings (``ef_search``, ``nprobe``)."""
        self.spec = spec
        self.version += 1

    def delete(self, ids: Sequence[str]) -> int:
        labels = [self._label_of[i] for i in ids if i in self._label_of]
        self._forget(labels)
        self.version += 1
        self._maybe_compact()
        return len(labels)

    # ---- snapshot ------------------------------------------------------------------------

    def snapshot(self) -> tuple[bytes, NamespaceState]:
        """A consistent copy; the caller holds at least the shared lock."""
        with faiss_errors("serialize the index"):
            data = faiss.serialize_index(self._index).tobytes()
        state = NamespaceState(
            entries=dict(self._entries),
            positions=dict(self._positions),
            tombstones=set(self._dead),
            next_label=self._next_label,
            applied_position=self.applied_position,
            trained=self._trained,
        )
        return data, state

    # ---- internals -----------------------------------------------------------------------

    def _faiss_search(
        self, queries: Matrix, k: int, plan: SearchPlan
    ) -> tuple[npt.NDArray[np.float32], Labels]:
        if plan.allowed is None and len(queries) >= exact.MIN_QUERIES and self._flat:
            vectors, labels = exact.flat_storage(self._index)
            return exact.search(vectors, labels, queries, k, l2_norms=self._l2_norms(vectors))
        # one SearchParameters per thread: IndexIDMap's search swaps ``params.sel`` for its own
        # translating selector (a stack object) for the length of the call, so two searches
        # sharing one object can read the other's, freed when it returns (a segfault)
        key = (k, threading.get_ident())
        params = plan.params.get(key, _UNSET)
        if params is _UNSET:
            params = plan.params[key] = self._params(plan.selector, k)
        if params is None:
            scores, labels = self._index.search(queries, k)
        else:
            scores, labels = self._index.search(queries, k, params=params)
        return scores, labels

    @property
    def approximate(self) -> bool:
        """Whether searches go to an HNSW graph or trained IVF lists (not a flat scan)."""
        return self.spec.index_kind == "hnsw" or self._trained

    @property
    def _flat(self) -> bool:
        """Whether the index is an ``IndexIDMap2(IndexFlat*)`` (flat, or IVF not yet trained)."""
        return self.spec.index_kind != "hnsw" and not self._trained

    def _l2_norms(self, vectors: Matrix) -> Matrix | None:
        """The stored vectors' squared norms under L2, cached until the next write."""
        if self.spec.metric != "l2":
            return None
        cached = self._norms
        if cached is None or cached[0] != self.version:
            cached = self._norms = (self.version, exact.squared_norms(vectors))
        return cached[1]

    def _params(self, selector: Any, k: int) -> Any:
        if self.spec.index_kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.spec.ef_search, k))
        elif self._trained:
            params = faiss.SearchParametersIVF(nprobe=self.spec.nprobe)
        elif selector is None:
            return None
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector  # borrowed pointer: the plan keeps ``selector`` alive
        return params

    def _rows(self, scores: npt.NDArray[np.float32], labels: Labels) -> list[list[VectorMatch]]:
        """The matches of each row of a search's results (one ``tolist`` per matrix)."""
        if self.spec.metric == "cosine":
            scores = np.clip(scores, -1.0, 1.0)
        return match_rows(scores.tolist(), labels.tolist(), self._entries.get)

    def _exact_rows(
        self,
        queries: Matrix,
        k: int,
        allowed: set[int] | None,
        rows_to_fix: list[int],
        rows: list[list[VectorMatch]],
    ) -> None:
        """Answer ``rows_to_fix`` by brute force over the candidates (approximate kinds only)."""
        labels = np.fromiter(allowed if allowed is not None else self._entries, np.int64)
        with faiss_errors("reconstruct candidates"):
            vectors = np.vstack([self._index.reconstruct(int(label)) for label in labels])
        exact = faiss.IndexIDMap2(faiss.IndexFlat(self.spec.dimension, _faiss_metric(self.spec)))
        exact.add_with_ids(vectors, labels)
        scores, found = exact.search(np.ascontiguousarray(queries[rows_to_fix]), k)
        for row, hits in zip(rows_to_fix, self._rows(scores, found), strict=True):
            rows[row] = hits

    def _forget(self, labels: list[int]) -> None:
        if not labels:
            return
        if self.spec.index_kind == "hnsw":
            self._dead.update(labels)
        else:
            with faiss_errors("remove vectors"):
                self._index.remove_ids(np.asarray(labels, dtype=np.int64))
        for label in labels:
            vector_id, meta = self._entries.pop(label)
            self._filters.remove(label, meta)
            if self._label_of.get(vector_id) == label:
                del self._label_of[vector_id]

    def _maybe_train(self) -> None:
        spec = self.spec
        if spec.index_kind != "ivf" or self._trained or len(self._entries) < spec.train_size:
            return
        labels, vectors = _stored(self._index)
        logger.info("namespace %s: training IVF on %d vectors", spec.name, len(labels))
        with faiss_errors("train the IVF index"):
            index = _trained_ivf(spec, vectors)
            index.add_with_ids(vectors, labels)
        self._index, self._trained = index, True

    def _maybe_compact(self) -> None:
        if len(self._dead) <= max(COMPACT_MIN, COMPACT_FRACTION * self._index.ntotal):
            return
        labels, vectors = _stored(self._index)
        keep = ~np.isin(labels, np.fromiter(self._dead, np.int64, len(self._dead)))
        with faiss_errors("rebuild the HNSW graph"):
            index = new_index(self.spec)
            index.add_with_ids(np.ascontiguousarray(vectors[keep]), labels[keep])
        logger.debug("namespace %s: compacted %d tombstones", self.spec.name, len(self._dead))
        self._index = index
        self._dead = set()


def _started(fn: Callable[..., Any], *args: Any, alone: bool) -> Callable[[], object]:
    """Start ``fn(*args)`` in a thread (unless ``alone``: then it runs when waited for); the
    returned call waits for it and raises what it raised."""
    if alone:
        return functools.partial(fn, *args)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fn(*args)
        except BaseException as exc:  # handed to the waiting thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="faiss-add", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if failure:
            raise failure[0]

    return wait


def frozen(metas: Sequence[Meta]) -> list[Stored]:
    """Read-only views of validated metadata (each already the namespace's own copy)."""
    return [None if meta is None else MappingProxyType(meta) for meta in metas]
