"""FAISS as a projection sink: a namespace per version, positions kept beside every id.

FAISS lives in the memory of each process that serves vector queries (a *local* sink). Each
version of a projection is a namespace ``{name}_v{version}``; :class:`VectorIndex` keeps the last
applied position per id (tombstones included) and per namespace, and drops a change whose
position is not newer, so a replay or a duplicate changes nothing and a late upsert after a delete
stays deleted. The flip is a namespace alias: ``data.vectors.query(name, ...)`` reads the active
version. The checkpoint of a local sink is the position in its own snapshot, not a row in
Postgres: a serving process loads its snapshot, then replays the log from that position.

An :class:`Upsert` document for this sink is ``{"vector": ..., "metadata": {...}}``, the vector
a list of numbers or, much faster to replay, ``encode_vector(v)`` (:mod:`satellites_es.vectors.codec`).
A run of upserts is written with one ``VectorIndex.upsert_arrays`` call on one decoded matrix
(no per-item tuples to validate and stack again; issue #6, ``bench/stages/rebuild.py`` has the
figures). A projection whose handler is a :class:`~satellites_es.projections.fields.VectorFields`
skips the per-event objects altogether: the projector hands :meth:`FaissSink.apply_runs` the
columns it read from the log.

With a snapshot store (``FaissConfig.snapshot_url``), the first ``prepare`` of a namespace in
this process bootstraps it first (:mod:`.replica`): the newest verified snapshot of the store
when it is newer than the local one, so a new process replays only the log after it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, ProjectionError, VectorIndexError
from ..vectors import VectorIndex
from ..vectors.codec import decode_matrix, decode_vector
from .fields import VectorRun
from .model import Change, Delete, Projection, Upsert
from .replica import Replica
from .sinks import Fix, Held, SinkDump, translated

__all__ = ["FaissSink"]


class FaissSink:
    kind = "faiss"

    def __init__(self, vectors: VectorIndex, replica: Replica | None = None) -> None:
        self.vectors = vectors
        self.replica = replica

    async def prepare(self, projection: Projection, version: int) -> None:
        name = projection.target(version)
        if self.replica is not None and name not in self.replica.status:
            await self.replica.bootstrap(name)
        if name not in await self.vectors.namespaces():
            opts = projection.options
            await self.vectors.create_namespace(
                name,
                dimension=opts.get("dimension"),
                metric=opts.get("metric"),
                index_kind=opts.get("index_kind"),
            )

    async def apply(self, projection: Projection, version: int, changes: Sequence[Change]) -> int:
        runs: list[VectorRun | Delete] = []
        upserts: list[Upsert] = []
        for change in changes:
            if isinstance(change, Upsert):
                upserts.append(change)
                continue
            if upserts:
                runs.append(_run_of(projection.target(version), upserts))
                upserts = []
            runs.append(change)
        if upserts:
            runs.append(_run_of(projection.target(version), upserts))
        return await self.apply_runs(projection, version, runs)

    async def apply_runs(
        self, projection: Projection, version: int, runs: Sequence[VectorRun | Delete]
    ) -> int:
        """Apply runs of upserts and deletes in order: a run is one ``upsert_arrays`` call on
        one decoded matrix (:func:`~satellites_es.vectors.codec.decode_matrix`), with the
        positions that make a replayed or late change a no-op."""
        name = projection.target(version)
        applied = 0
        try:
            with translated("faiss", f"apply to {name}"):
                for run in runs:
                    if isinstance(run, Delete):
                        applied += await self._delete(name, run)
                    else:
                        applied += await self.vectors.upsert_arrays(
                            name, run.keys, decode_matrix(run.vectors), run.metadata,
                            positions=run.positions,
                        )  # fmt: skip
        except VectorIndexError as exc:
            raise ProjectionError(f"faiss sink {name}: {exc}") from exc
        return applied

    async def _delete(self, name: str, change: Delete) -> int:
        return int(await self.vectors.delete(name, change.key, position=change.position))

    async def activate(self, projection: Projection, version: int) -> None:
        self.vectors.set_alias(projection.name, projection.target(version))

    async def active_version(self, projection: Projection) -> int | None:
        target = self.vectors.alias_target(projection.name)
        return None if target is None else int(target.rsplit("_v", 1)[1])

    async def drop(self, projection: Projection, version: int) -> None:
        await self.vectors.drop_namespace(projection.target(version))

    async def dump(self, projection: Projection, version: int) -> SinkDump:
        name = projection.target(version)
        out: SinkDump = {}
        for vector_id in await self.vectors.ids(name):
            got = await self.vectors.get(name, vector_id)
            if got is not None:
                vector, metadata = got
                out[vector_id] = _doc(vector.tolist(), metadata)
        return out

    async def local_checkpoint(self, projection: Projection, version: int) -> int | None:
        name = projection.target(version)
        if name not in await self.vectors.namespaces():
            return None
        return self.vectors.applied_position(name) or 0

    async def flush(self, projection: Projection, version: int) -> None:
        """Save the version's snapshot; a directory that cannot be written (read-only, full) is
        a :class:`BackendUnavailableError`: the projector keeps serving and saves again later."""
        name = projection.target(version)
        try:
            with translated("faiss", f"save the snapshot of {name}"):
                await self.vectors.save(name)
        except VectorIndexError as exc:
            raise BackendUnavailableError("faiss", f"save the snapshot of {name}: {exc}") from exc

    # -- audit: read ids with their positions, repair single ids ---------------------------------

    async def scan_keys(
        self, projection: Projection, version: int, chunk: int
    ) -> AsyncIterator[list[str]]:
        """Live ids. (A tombstone is only a position kept for an id: the log side checks those.)"""
        name = projection.target(version)
        if name not in await self.vectors.namespaces():
            return
        live = await self.vectors.ids(name)
        for start in range(0, len(live), chunk):
            yield live[start : start + chunk]

    async def read_keys(
        self, projection: Projection, version: int, keys: Sequence[str]
    ) -> dict[str, Held]:
        name = projection.target(version)
        if name not in await self.vectors.namespaces():
            return {}
        out: dict[str, Held] = {}
        for key in keys:
            position = self._position_of(name, key)
            got = await self.vectors.get(name, key)
            if got is not None:
                out[key] = Held(position, _doc(got[0].tolist(), got[1]))
            elif position is not None:
                out[key] = Held(position, None)  # deleted at a position: a tombstone
        return out

    def _position_of(self, namespace: str, key: str) -> int | None:
        # VectorIndex keeps a position per id but has no public read of one; the audit needs it
        # to tell a key that missed an event from one that holds it.
        return self.vectors._slot(namespace).ns.position_of(key)

    def same(
        self, projection: Projection, expected: Mapping[str, Any] | None,
        held: Mapping[str, Any] | None,
    ) -> bool:  # fmt: skip
        """Vectors equal within float32 rounding (unit length first under cosine, as stored);
        metadata equal as JSON."""
        if expected is None or held is None:
            return expected is None and held is None
        try:
            want = decode_vector(expected["vector"])
            got = np.asarray(held["vector"], dtype=np.float32)
        except (KeyError, TypeError, ValueError):
            return False
        if projection.options.get("metric", "cosine") == "cosine":
            norm = float(np.linalg.norm(want))
            want = want / norm if norm > 0 else want
        if want.shape != got.shape or not np.allclose(want, got, rtol=1e-5, atol=1e-6):
            return False
        return _json(expected.get("metadata")) == _json(held.get("metadata"))

    async def repair(self, projection: Projection, version: int, fixes: Sequence[Fix]) -> int:
        """Write each id at its log position. Positions only rise here: where the id holds a
        position at or above the log's (a write from outside), the content is written without
        one and the higher position stays, which is harmless up to the log's head. Then the
        snapshot is saved: repair FAISS with its projectors stopped, since each serving process
        holds and saves its own copy."""
        await self.prepare(projection, version)
        name = projection.target(version)
        written = 0
        try:
            for f in fixes:
                held = self._position_of(name, f.key)
                at = f.want.position if f.want is not None else None
                positioned = at is not None and (held is None or held < at)
                if f.want is None or isinstance(f.want, Delete):
                    removed = await self.vectors.delete(name, f.key,
                                                        position=at if positioned else None)  # fmt: skip
                    written += int(removed or positioned)
                    continue
                vector = decode_vector(f.want.document["vector"])
                written += await self.vectors.upsert_arrays(
                    name, [f.key], vector.reshape(1, -1), [f.want.document.get("metadata")],
                    positions=[at] if positioned and at is not None else None,
                )  # fmt: skip
        except VectorIndexError as exc:
            raise ProjectionError(f"faiss sink {name}: {exc}") from exc
        await self.vectors.save(name)
        return written


def _run_of(name: str, upserts: list[Upsert]) -> VectorRun:
    """Upsert changes as a run; metadata None when no change has any (nothing to check)."""
    try:
        vectors = [c.document["vector"] for c in upserts]
    except (KeyError, TypeError) as exc:
        raise ProjectionError(f"faiss sink {name}: an upsert document has no 'vector'") from exc
    metadata = [c.document.get("metadata") for c in upserts]
    return VectorRun(
        [c.key for c in upserts],
        vectors,
        None if metadata.count(None) == len(metadata) else metadata,
        [c.position for c in upserts],
    )


def _doc(vector: list[float], metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    return {"vector": vector, "metadata": None if metadata is None else dict(metadata)}


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
