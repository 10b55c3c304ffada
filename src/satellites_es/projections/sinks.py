"""The sink protocol every projection target implements, and the helpers sinks share.

A sink holds versions of a projection side by side (``entities_v1``, ``entities_v2``) and one of
them is *active*: the one readers see. ``apply`` is conditional on the position each change
carries, so it can be called with duplicates, late events and whole replays without changing the
result (ARCHITECTURE point 5). ``activate`` is the blue/green flip, one atomic step per store:
a Redis pointer key, an Elasticsearch alias swap, a FAISS namespace alias.

Shared sinks (Redis, Elasticsearch) keep their checkpoint in Postgres; a local sink (FAISS, in
the memory of every serving process) keeps it beside its own snapshot (``local_checkpoint``).

Errors: every method of every sink runs its driver calls under :func:`translated`, so what leaves
a sink is ours and says what it means (:mod:`satellites_es.faults`):
:class:`~satellites_es.errors.BackendUnavailableError` (the store is unreachable or busy: try the
same work again later), :class:`~satellites_es.errors.RejectedChangesError` (these changes were
refused for good, every other one of the call applied) or
:class:`~satellites_es.errors.ProjectionError` (the call failed for good; the projector then
isolates the change that made it fail).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from ..errors import BackendUnavailableError, ProjectionError, SatellitesError
from ..faults import is_transient
from .model import Change, Delete, Projection

if TYPE_CHECKING:
    from .fields import VectorRun

__all__ = ["Fix", "Held", "RunSink", "Sink", "SinkDump", "translated"]

T = TypeVar("T")

#: key -> document, or None for a tombstone.
SinkDump = dict[str, Mapping[str, Any] | None]


@dataclass(frozen=True)
class Held:
    """What a sink holds for one key, as the audit reads it."""

    #: The position it was written at; None where the sink kept none (a write from outside).
    position: int | None
    #: The document; None for a tombstone.
    document: Mapping[str, Any] | None


@dataclass(frozen=True)
class Fix:
    """One key the audit found drifted, and what the log says it must hold."""

    key: str
    #: The change to write (at its log position); None: the key must not be there at all.
    want: Change | None
    #: What the audit read; a sink that can compare-and-set writes only if it still holds it.
    seen: Held | None
    #: The version's checkpoint: every position up to it is applied, and none of the key's
    #: events lies between its log position and this one. A sink that cannot write below what
    #: it holds (Elasticsearch) may write at any position up to here with the same effect.
    floor: int = 0


class Sink(Protocol):
    kind: str

    async def prepare(self, projection: Projection, version: int) -> None:
        """Create the version's target if it does not exist (idempotent)."""

    async def apply(self, projection: Projection, version: int, changes: Sequence[Change]) -> int:
        """Apply changes newer than what the target holds per key; returns how many applied."""

    async def activate(self, projection: Projection, version: int) -> None:
        """Point readers at ``version`` in one atomic step."""

    async def active_version(self, projection: Projection) -> int | None:
        """The version readers see now, as the sink knows it."""

    async def drop(self, projection: Projection, version: int) -> None:
        """Remove a version's target (never the active one)."""

    async def dump(self, projection: Projection, version: int) -> SinkDump:
        """Every key of a version with its document (None for tombstones), for verification."""

    async def local_checkpoint(self, projection: Projection, version: int) -> int | None:
        """For a local sink, the last position its own snapshot holds; None for shared sinks."""

    async def flush(self, projection: Projection, version: int) -> None:
        """Make what was applied durable where the sink is not already (FAISS: a snapshot)."""

    # -- audit (satellites_es.audit): read a version key by key, and repair single keys ----------

    def scan_keys(
        self, projection: Projection, version: int, chunk: int
    ) -> AsyncIterator[list[str]]:
        """Every key the version holds (documents and tombstones), ``chunk`` at a time."""

    async def read_keys(
        self, projection: Projection, version: int, keys: Sequence[str]
    ) -> dict[str, Held]:
        """What the version holds for each of ``keys``, with its position (absent keys left out)."""

    def same(
        self, projection: Projection, expected: Mapping[str, Any] | None,
        held: Mapping[str, Any] | None,
    ) -> bool:  # fmt: skip
        """Whether a held document is what the expected one becomes in this sink."""

    async def repair(self, projection: Projection, version: int, fixes: Sequence[Fix]) -> int:
        """Write each fix's change at its log position (or remove the key); returns how many were
        written. A key that changed since the audit read it is left alone."""


@runtime_checkable
class RunSink(Protocol):
    """A sink that also takes changes as columns (FAISS): a projection whose handler is a
    :class:`~satellites_es.projections.fields.VectorFields` is replayed into it without an
    object per event."""

    async def apply_runs(
        self, projection: Projection, version: int, runs: Sequence[VectorRun | Delete]
    ) -> int:
        """``apply`` for runs of upserts (as columns) and deletes, in order."""


@contextlib.contextmanager
def translated(backend: str, what: str) -> Iterator[None]:
    """Run one sink call's driver work, raising only our errors: a transient driver error as
    :class:`BackendUnavailableError` naming ``backend``, any other as :class:`ProjectionError`
    (both chained to the driver's); our own errors pass unchanged."""
    try:
        yield
    except SatellitesError:
        raise
    except Exception as exc:
        reason = f"{what}: {type(exc).__name__}: {exc}"
        if is_transient(exc):
            raise BackendUnavailableError(backend, reason) from exc
        raise ProjectionError(f"{backend} sink {reason}") from exc


async def chunked(items: AsyncIterator[T], size: int) -> AsyncIterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter), as a sink streams its keys."""
    batch: list[T] = []
    async for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
