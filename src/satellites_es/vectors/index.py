"""VectorIndex: named FAISS namespaces behind an asyncio API.

Threads. Every FAISS write runs in a ThreadPoolExecutor of ``FaissConfig.threads`` workers; every
search too large for the event loop runs on one of as many dedicated search threads
(:mod:`.searcher`: a cheap handoff), and a search smaller
than a thread hop (one HNSW or IVF query) runs on the event loop itself. Each namespace has a
readers-writer lock: searches, ``get`` and the copy taken by ``save`` share it; upserts, deletes,
``load`` and ``drop_namespace`` take it alone. A write or search whose caller is cancelled still
finishes in its thread before the lock is released, so a cancellation never leaves a
half-applied batch, nor a search reading an index being written.

Queries. Single ``query`` calls go through a per-namespace :class:`~.coalesce.QueryCoalescer`:
a lone cheap one is answered on the spot, concurrent ones become batched searches (on an
approximate index, one part per search thread); ``query_many`` searches its batch directly.

Positions ("exactly-once effect by position", for event projections). A write given a
``position`` applies only if it is above the last position applied to that id; deletes keep
their position as a tombstone, so a late upsert cannot resurrect a deleted id. The largest
applied position is ``applied_position(namespace)``, saved in the manifest. Writes without a
position always apply.

Missing namespaces. ``upsert`` creates one with the config's defaults; a positioned ``delete``
does too (to keep its tombstone); ``query``, ``query_many``, ``get`` and ``count`` raise
:class:`~satellites_es.errors.NamespaceNotFoundError`; an unpositioned ``delete`` returns False
and ``applied_position`` returns None.

Persistence is explicit: ``save`` writes atomic snapshots (:mod:`.persistence`), ``close`` does not
save. ``drop_namespace`` removes the namespace from memory and disk.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from ..config import FaissConfig
from ..errors import InvalidVectorError, LifecycleError, NamespaceNotFoundError, VectorIndexError
from ..shielded import finished
from ..tracing import span
from .coalesce import QueryCoalescer
from .locks import RWLock
from .models import IndexKind, Metric, NamespaceSpec, VectorMatch
from .namespace import Namespace
from .persistence import (
    Snapshot,
    encode_snapshot,
    read_snapshot,
    remove_namespace_dir,
    snapshot_namespaces,
    write_snapshot,
)
from .searcher import SearchThreads
from .validation import (
    check_id,
    check_ids,
    check_metadata,
    check_namespace,
    check_query,
    check_vectors,
)

__all__ = ["VectorIndex"]

T = TypeVar("T")
_FIELD = (operator.itemgetter(0), operator.itemgetter(1), operator.itemgetter(2))
Item = tuple[str, Sequence[float] | npt.NDArray[Any], Mapping[str, Any] | None]
Filter = Mapping[str, Any] | None


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(eq=False)
class _Slot:
    """A namespace and what guards it; ``ns`` is swapped by ``load`` under the write lock."""

    ns: Namespace
    coalescer: QueryCoalescer
    lock: RWLock = field(default_factory=RWLock)
    save_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    saved_version: int = -1
    dropped: bool = False

    @property
    def dirty(self) -> bool:
        return self.saved_version != self.ns.version


class VectorIndex:
    def __init__(self, config: FaissConfig) -> None:
        self._config = config
        self._root = Path(config.index_path)
        self._slots: dict[str, _Slot] = {}
        #: Called with (namespace, seconds) after each query: the latency metric's hook.
        self.on_query: Callable[[str, float], None] | None = None
        #: Read-side names for namespaces: a projection's name -> its active version's namespace.
        self._aliases: dict[str, str] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._searcher: SearchThreads | None = None
        self._state = _State.NEW
        self._closing: asyncio.Future[None] | None = None

    # ---- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Create the directory, start the workers and load every saved namespace."""
        if self._state is not _State.NEW:
            raise LifecycleError(f"VectorIndex is {self._state.value}; open() needs a new one")
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, self._config.threads), thread_name_prefix="faiss"
        )
        self._searcher = SearchThreads(self._config.threads)
        self._searcher.start()
        self._state = _State.OPEN
        try:
            await self._run(self._root.mkdir, parents=True, exist_ok=True)
            await self.load()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Answer queued queries, then stop the workers. Does not save. Runs to its end though
        the caller be cancelled meanwhile (``shielded.finished``); a second ``close()`` waits
        for the first."""
        if self._closing is None:
            if self._state is not _State.OPEN:
                self._state = _State.CLOSED
                return
            self._closing = asyncio.ensure_future(self._close())
        await finished(self._closing)

    async def _close(self) -> None:
        for slot in list(self._slots.values()):
            await slot.coalescer.close()
        self._state = _State.CLOSED
        searcher, self._searcher = self._searcher, None
        if searcher is not None:
            await searcher.close()
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)

    async def __aenter__(self) -> VectorIndex:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- namespaces ----------------------------------------------------------------------

    async def create_namespace(
        self,
        namespace: str,
        *,
        dimension: int | None = None,
        metric: Metric | None = None,
        index_kind: IndexKind | None = None,
        **tuning: int,
    ) -> None:
        """Create an empty namespace; ``tuning`` takes hnsw_m, ef_construction, ef_search,
        nlist, nprobe. Creating an existing one with the same settings is a no-op."""
        self._check_open()
        spec = self._spec(check_namespace(namespace), dimension, metric, index_kind, tuning)
        existing = self._slots.get(namespace)
        if existing is None:
            self._install(Namespace(spec))
        elif existing.ns.spec != spec:
            raise VectorIndexError(f"namespace {namespace!r} exists as {existing.ns.spec}")

    async def tune_namespace(
        self, namespace: str, *, ef_search: int | None = None, nprobe: int | None = None
    ) -> None:
        """Change a namespace's search-time settings (HNSW ``ef_search``, IVF ``nprobe``): the
        recall/speed trade-off, set without a rebuild. Saved with the next snapshot."""
        slot = self._slot(namespace)
        spec = slot.ns.spec
        ef_search = spec.ef_search if ef_search is None else ef_search
        nprobe = spec.nprobe if nprobe is None else nprobe
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (ef_search, nprobe)):
            raise VectorIndexError(f"search settings must be ints, got {ef_search!r}, {nprobe!r}")
        async with slot.lock.write():
            self._live(slot).retune(replace(slot.ns.spec, ef_search=ef_search, nprobe=nprobe))

    async def drop_namespace(self, namespace: str) -> bool:
        """Remove a namespace from memory and disk; False if it did not exist."""
        self._check_open()
        check_namespace(namespace)
        slot = self._slots.get(namespace)
        on_disk = (self._root / namespace).exists()
        if slot is not None:
            async with slot.save_lock, slot.lock.write():
                slot.dropped = True
                del self._slots[namespace]
        if on_disk:
            await self._run(remove_namespace_dir, self._root, namespace)
        return slot is not None or on_disk

    async def namespaces(self) -> list[str]:
        self._check_open()
        return sorted(self._slots)

    # ---- writes --------------------------------------------------------------------------

    async def upsert(
        self,
        namespace: str,
        vector_id: str,
        vector: Sequence[float] | npt.NDArray[Any],
        metadata: Mapping[str, Any] | None = None,
        *,
        position: int | None = None,
    ) -> None:
        positions = None if position is None else [position]
        await self.upsert_many(namespace, [(vector_id, vector, metadata)], positions=positions)

    async def upsert_many(
        self,
        namespace: str,
        items: Sequence[Item],
        *,
        positions: Sequence[int] | None = None,
    ) -> int:
        """Insert or replace vectors; returns how many items applied (stale positions skip)."""
        spec = self._write_spec(namespace)
        ids, vectors, metas = self._check_items(items, spec)
        return await self._upsert(spec, ids, vectors, metas, positions)

    async def upsert_arrays(
        self,
        namespace: str,
        ids: Sequence[str],
        vectors: npt.ArrayLike,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        positions: Sequence[int] | None = None,
    ) -> int:
        """``upsert_many`` for a caller holding a matrix (a model's output): ``ids[i]`` names
        row ``i`` of ``vectors``; ``metadata`` has one mapping or None per row, or is None.

        A C-contiguous float32 matrix is not copied under ``ip`` and ``l2`` (FAISS copies it
        into its own storage): leave it unchanged until the call returns.
        """
        spec = self._write_spec(namespace)
        checked_ids = check_ids(list(ids))
        matrix = check_vectors(vectors, spec.dimension, normalise=_cos(spec), copy=False)
        if len(matrix) != len(checked_ids):
            raise InvalidVectorError(f"{len(checked_ids)} ids for {len(matrix)} vectors")
        if metadata is None:
            metas: list[dict[str, Any] | None] = [None] * len(checked_ids)
        elif len(metadata) != len(checked_ids):
            raise InvalidVectorError(f"{len(metadata)} metadata for {len(checked_ids)} ids")
        else:
            metas = check_metadata(metadata)
        return await self._upsert(spec, checked_ids, matrix, metas, positions)

    def _write_spec(self, namespace: str) -> NamespaceSpec:
        """The spec a write to ``namespace`` uses: its own, or the defaults of a new one."""
        self._check_open()
        check_namespace(namespace)
        slot = self._slots.get(namespace)
        return slot.ns.spec if slot is not None else self._spec(namespace, None, None, None, {})

    async def _upsert(
        self,
        spec: NamespaceSpec,
        ids: list[str],
        vectors: npt.NDArray[np.float32],
        metas: list[dict[str, Any] | None],
        positions: Sequence[int] | None,
    ) -> int:
        checked_positions = _check_positions(positions, len(ids))
        if not ids:
            return 0
        namespace = spec.name
        slot = self._slots.get(namespace) or self._install(Namespace(spec))
        async with slot.lock.write():
            ns = self._live(slot)
            return await self._run(ns.apply_upserts, ids, vectors, metas, checked_positions)

    async def delete(self, namespace: str, vector_id: str, *, position: int | None = None) -> bool:
        """Delete one vector; True if one was removed. Stale positions are ignored."""
        self._check_open()
        check_namespace(namespace)
        check_id(vector_id)
        _check_positions(None if position is None else [position], 1)
        slot = self._slots.get(namespace)
        if slot is None and position is None:
            return False
        if slot is None:
            slot = self._install(Namespace(self._spec(namespace, None, None, None, {})))
        async with slot.lock.write():
            ns = self._live(slot)
            return await self._run(ns.apply_delete, vector_id, position)

    # ---- reads ---------------------------------------------------------------------------

    async def query(
        self,
        namespace: str,
        vector: Sequence[float] | npt.NDArray[Any],
        top_k: int = 10,
        *,
        filter: Filter = None,
    ) -> list[VectorMatch]:
        """The ``top_k`` best matches, best first (see :class:`VectorMatch` for scores)."""
        slot = self._slot(namespace)
        self._check_query_args(top_k, filter)
        spec = slot.ns.spec
        row = check_query(vector, spec.dimension, normalise=_cos(spec))
        started = time.perf_counter()
        with span("vectors.query", namespace=namespace, top_k=top_k):  # no-op without OTel
            matches = await slot.coalescer.query(row, top_k, filter)
        if self.on_query is not None:
            self.on_query(namespace, time.perf_counter() - started)
        return matches

    async def query_many(
        self,
        namespace: str,
        vectors: Sequence[Sequence[float]] | npt.NDArray[Any],
        top_k: int = 10,
        *,
        filter: Filter = None,
    ) -> list[list[VectorMatch]]:
        """One batched search; a result list per input vector."""
        slot = self._slot(namespace)
        matrix = self._check_query(slot, vectors, top_k, filter)
        if len(matrix) == 0:
            return []
        return await self._search(slot, matrix, top_k, filter)

    async def get(
        self, namespace: str, vector_id: str
    ) -> tuple[npt.NDArray[np.float32], Mapping[str, Any] | None] | None:
        """The stored vector (unit length under cosine) and its metadata, or None."""
        slot = self._slot(namespace)
        check_id(vector_id)
        async with slot.lock.read():
            return await self._run(self._live(slot).get, vector_id)

    async def ids(self, namespace: str) -> list[str]:
        """Every live id in the namespace, sorted."""
        slot = self._slot(namespace)
        async with slot.lock.read():
            return self._live(slot).ids()

    def set_alias(self, alias: str, namespace: str) -> None:
        """Make reads of ``alias`` (query, get, count, ids) go to ``namespace``: a blue/green
        flip in one step. A real namespace of the same name takes precedence over an alias."""
        self._aliases[check_namespace(alias)] = check_namespace(namespace)

    def alias_target(self, alias: str) -> str | None:
        return self._aliases.get(alias)

    async def count(self, namespace: str) -> int:
        return len(self._slot(namespace).ns)

    def applied_position(self, namespace: str) -> int | None:
        slot = self._slots.get(check_namespace(namespace))
        return None if slot is None else slot.ns.applied_position

    def stats(self) -> dict[str, Any]:
        namespaces = {name: _ns_stats(slot) for name, slot in sorted(self._slots.items())}
        return {
            "state": self._state.value,
            "index_path": str(self._root),
            "dimension": self._config.dimension,
            "namespaces": namespaces,
            "total_vectors": sum(s["count"] for s in namespaces.values()),
        }

    # ---- persistence ---------------------------------------------------------------------

    async def save(self, namespace: str | None = None) -> None:
        """Snapshot one namespace, or every namespace changed since its last save."""
        self._check_open()
        if namespace is not None:
            await self._save(self._slot(namespace))
            return
        for slot in list(self._slots.values()):
            if slot.dirty:
                await self._save(slot)

    async def load(self, namespace: str | None = None) -> None:
        """Replace one namespace, or every namespace saved on disk, by its current snapshot.

        Namespaces held only in memory are left alone by ``load()``.
        """
        self._check_open()
        names = [check_namespace(namespace)] if namespace is not None else None
        if names is None:
            names = await self._run(snapshot_namespaces, self._root)
        for name in names:
            await self._load(name)

    async def export_snapshot(self, namespace: str) -> dict[str, bytes]:
        """The files of a snapshot of ``namespace`` as it is now, in memory (for an object
        store: :mod:`.snapshot_store`); the local snapshot on disk is left alone."""
        slot = self._slot(namespace)
        async with slot.lock.read():
            ns = self._live(slot)
            data, state = await self._run(ns.snapshot)
        return await self._run(encode_snapshot, ns.spec, data, state)

    async def adopt_snapshot(self, snapshot: Snapshot) -> None:
        """Serve ``snapshot``, verified elsewhere (an object store's download, through
        :mod:`.persistence`'s ``decode_*`` steps), in place of its namespace; it is written to
        disk at the next ``save``."""
        self._check_open()
        check_namespace(snapshot.spec.name)
        await self._adopt(snapshot, saved=False)

    # ---- internals -----------------------------------------------------------------------

    async def _save(self, slot: _Slot) -> None:
        async with slot.save_lock:
            async with slot.lock.read():
                ns = self._live(slot)
                version = ns.version
                data, state = await self._run(ns.snapshot)
            self._live(slot)
            await self._run(write_snapshot, self._root / ns.spec.name, ns.spec, data, state)
            slot.saved_version = version

    async def _load(self, name: str) -> None:
        spec, index, state = await self._run(read_snapshot, self._root / name, name)
        await self._adopt(Snapshot(spec, index, state), saved=True)

    async def _adopt(self, snapshot: Snapshot, *, saved: bool) -> None:
        # built in a worker: its id -> label map over every entry held the event loop while
        # queries waited (BENCHMARKS.md, issue 20)
        loaded = await self._run(Namespace, snapshot.spec, snapshot.index, snapshot.state)
        version = loaded.version if saved else -1
        slot = self._slots.get(snapshot.spec.name)
        if slot is None:
            self._install(loaded).saved_version = version
            return
        async with slot.save_lock, slot.lock.write():
            slot.ns = loaded
            slot.saved_version = version

    async def _search(
        self, slot: _Slot, matrix: npt.NDArray[np.float32], k: int, flt: Filter
    ) -> list[list[VectorMatch]]:
        """Search on the event loop if small (``_search_now``), else on a search thread."""
        rows = self._search_now(slot, matrix, k, flt)
        if rows is not None:
            return rows
        searcher = self._searcher
        if searcher is None:
            raise LifecycleError("VectorIndex is not open")
        async with slot.lock.read():
            future = searcher.submit(self._live(slot).search, matrix, k, flt)
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                await asyncio.wait(
                    [future]
                )  # FAISS cannot be interrupted: keep the lock until it ends
                raise

    def _search_now(
        self, slot: _Slot, matrix: npt.NDArray[np.float32], k: int, flt: Filter
    ) -> list[list[VectorMatch]] | None:
        """Answer on the event loop if the search is small (a single HNSW or IVF query: see
        ``Namespace.search_inline``) and the read lock is free now, else None.

        A thread hop costs a small search about as much as FAISS does: the handoff, the wake-ups
        of both threads and the GIL passing between them (BENCHMARKS.md, "Vectors on
        approximate indexes"). The lock is taken without waiting and never ahead of a queued writer,
        so writes keep their turn; under it nothing writes, as on a worker.
        """
        if slot.dropped or not slot.lock.try_read():
            return None
        try:
            return slot.ns.search_inline(matrix, k, flt)
        finally:
            slot.lock.release_read()

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` in a worker; if the caller is cancelled, still wait for it to finish
        (it may hold a namespace lock, and FAISS cannot be interrupted)."""
        if self._executor is None:
            raise LifecycleError("VectorIndex is not open")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])
            raise

    def _install(self, ns: Namespace) -> _Slot:
        name = ns.spec.name
        coalescer = QueryCoalescer(
            lambda m, k, f: self._search(slot, m, k, f),
            max_batch=self._config.coalesce_max_batch,
            name=name,
            inline=lambda m, k, f: self._search_now(slot, m, k, f),
            parts=lambda: self._parts(slot),
        )
        slot = _Slot(ns, coalescer)
        self._slots[name] = slot
        return slot

    def _parts(self, slot: _Slot) -> int:
        """Parts a coalesced batch is cut into: one per search thread on an approximate index
        (its cost per query hardly falls with the batch size), else one (a flat scan is shared
        by the whole batch)."""
        searcher = self._searcher
        return searcher.count if searcher is not None and slot.ns.approximate else 1

    def _spec(
        self,
        name: str,
        dimension: int | None,
        metric: Metric | None,
        index_kind: IndexKind | None,
        tuning: Mapping[str, int],
    ) -> NamespaceSpec:
        try:
            return NamespaceSpec(
                name=name,
                dimension=dimension or self._config.dimension,
                metric=metric or self._config.metric,
                index_kind=index_kind or self._config.index_kind,
                **tuning,
            )
        except TypeError as exc:
            raise VectorIndexError(f"unknown namespace setting: {exc}") from exc

    def _check_items(
        self, items: Sequence[Item], spec: NamespaceSpec
    ) -> tuple[list[str], npt.NDArray[np.float32], list[dict[str, Any] | None]]:
        try:  # not zip(*items): a call with 10,000 arguments cost 5 ms a batch, 10x this
            if items and set(map(len, items)) != {3}:
                raise ValueError("an item is not (id, vector, metadata)")
            raw_ids, rows, metas = (list(map(_FIELD[n], items)) for n in range(3))
        except (TypeError, ValueError, LookupError) as exc:
            raise InvalidVectorError("items must be (id, vector, metadata) tuples") from exc
        ids = check_ids(raw_ids)
        if not ids:
            return [], np.empty((0, spec.dimension), np.float32), []
        vectors = check_vectors(rows, spec.dimension, normalise=_cos(spec))
        return ids, vectors, check_metadata(metas)

    def _check_query(
        self, slot: _Slot, vectors: Any, top_k: int, flt: Filter
    ) -> npt.NDArray[np.float32]:
        self._check_query_args(top_k, flt)
        spec = slot.ns.spec
        return check_vectors(vectors, spec.dimension, normalise=_cos(spec))

    @staticmethod
    def _check_query_args(top_k: int, flt: Filter) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InvalidVectorError(f"top_k must be a positive int, got {top_k!r}")
        if flt is not None and not isinstance(flt, Mapping):
            raise InvalidVectorError("filter must be a mapping of metadata key to value")

    def _slot(self, namespace: str) -> _Slot:
        self._check_open()
        # an installed name was checked when installed: skip the pattern on the query path
        slot = self._slots.get(namespace) if isinstance(namespace, str) else None
        if slot is not None:
            return slot
        name = check_namespace(namespace)
        slot = self._slots.get(self._aliases.get(name, ""))
        if slot is None:
            raise NamespaceNotFoundError(f"namespace {namespace!r} does not exist")
        return slot

    def _live(self, slot: _Slot) -> Namespace:
        """The slot's namespace, unless it was dropped while the caller waited for the lock."""
        if slot.dropped:
            raise NamespaceNotFoundError(f"namespace {slot.ns.spec.name!r} was dropped")
        return slot.ns

    def _check_open(self) -> None:
        if self._state is not _State.OPEN:
            raise LifecycleError(f"VectorIndex is {self._state.value}; call open() first")


def _cos(spec: NamespaceSpec) -> bool:
    return spec.metric == "cosine"


def _check_positions(positions: Sequence[int] | None, n: int) -> list[int] | None:
    if positions is None:
        return None
    checked = positions.tolist() if isinstance(positions, np.ndarray) else list(positions)
    if len(checked) != n:
        raise InvalidVectorError(f"{len(checked)} positions for {n} items")
    if any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in checked):
        raise InvalidVectorError("positions must be non-negative ints")
    return checked


def _ns_stats(slot: _Slot) -> dict[str, Any]:
    ns = slot.ns
    return {
        "count": len(ns),
        "dimension": ns.spec.dimension,
        "metric": ns.spec.metric,
        "index_kind": ns.spec.index_kind,
        "ntotal": ns.ntotal,
        "tombstones": ns.tombstones,
        "trained": ns.trained,
        "applied_position": ns.applied_position,
        "dirty": slot.dirty,
        "coalesced_queries": slot.coalescer.queries,
        "faiss_searches": slot.coalescer.searches,
    }
