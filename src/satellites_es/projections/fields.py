"""A FAISS projection's handler written as fields, which a replay can apply a batch at a time.

Most vector projections map an event the same way: the vector is one payload field, the
metadata a few others, and some event types delete the key. Written as a function, that costs a
replay a ``DataEvent``, the handler call and two ``Upsert`` objects per event, on top of reading
the whole envelope. Written as :class:`VectorFields`, the same mapping is also data, and the
projector reads only positions, keys, types and payloads (the vector as raw text beside the rest,
:meth:`EventStore.read_payloads <satellites_es.store.EventStore.read_payloads>`) and hands the
FAISS sink :class:`VectorRun` columns: a d=384 rebuild went from ~20,000 to ~50,000 events/s
(``bench/stages/rebuild.py`` has the figures)::

    embeddings = Projection(
        name="embeddings", version=1, sink="faiss",
        event_types=("embedding.upserted", "embedding.deleted"),
        handler=VectorFields(vector="vector", metadata=("title", "topic"),
                             deletes=("embedding.deleted",)),
        options={"dimension": 384, "metric": "cosine"},
    )

A ``VectorFields`` is still a handler (``handler(event)`` gives the change), so anything that
works with events (the live path of another sink, a test) sees the same result; the column path
must give the same sink state as calling it event by event, and a test compares the two.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError, ProjectionError
from ..events import DataEvent
from ..store import PayloadBatch
from .model import Delete, Upsert

__all__ = ["VectorFields", "VectorRun"]


@dataclass(frozen=True, slots=True)
class VectorRun:
    """Upserts in position order as columns: ``keys[i]`` gets ``vectors[i]`` (encoded or a list
    of numbers) with ``metadata[i]`` (or no metadata at all when ``metadata`` is None) at
    ``positions[i]``."""

    keys: list[str]
    vectors: list[Any]
    metadata: list[Mapping[str, Any] | None] | None
    positions: list[int]


@dataclass(frozen=True)
class VectorFields:
    """``vector``: the payload field holding the vector (``encode_vector`` text, or a list of
    numbers). ``metadata``: payload fields copied into the metadata (a missing one is None; none
    at all gives no metadata). ``deletes``: event types that delete the event's key."""

    vector: str = "vector"
    metadata: tuple[str, ...] = ()
    deletes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, value in (("metadata", self.metadata), ("deletes", self.deletes)):
            if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
                raise ConfigurationError(f"VectorFields.{name}", "must be a tuple of names")
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.vector, str) or not self.vector:
            raise ConfigurationError("VectorFields.vector", "must be a payload field name")

    def __call__(self, event: DataEvent) -> Upsert | Delete:
        if event.type in self.deletes:
            return Delete(event.key)
        payload = event.payload
        if type(payload) is not dict or self.vector not in payload:
            raise self._missing(event.position)
        return Upsert(event.key, {"vector": payload[self.vector], "metadata": self._meta(payload)})

    def runs(self, batch: PayloadBatch) -> list[VectorRun | Delete]:
        """The changes of a batch as the FAISS sink writes them: runs of upserts between the
        deletes, in position order (what :meth:`__call__` gives event by event)."""
        types, deletes = batch.types, self.deletes
        if not len(batch):
            return []
        if set(types).isdisjoint(deletes):  # the usual batch: one run
            return [self._run(batch, 0, len(batch))]
        out: list[VectorRun | Delete] = []
        start = 0
        for i, type_ in enumerate(types):
            if type_ in deletes:
                if i > start:
                    out.append(self._run(batch, start, i))
                out.append(Delete(batch.keys[i], batch.positions[i]))
                start = i + 1
        if start < len(batch):
            out.append(self._run(batch, start, len(batch)))
        return out

    def change_at(self, batch: PayloadBatch, i: int) -> Upsert | Delete:
        """The change of the batch's ``i``-th event, as :meth:`__call__` gives it (with its
        position): the one-event-at-a-time path a projector takes to find a poison event."""
        key, position = batch.keys[i], batch.positions[i]
        if batch.types[i] in self.deletes:
            return Delete(key, position)
        payload = batch.payloads[i]
        if type(payload) is not dict or self.vector not in payload:
            raise self._missing(position)
        document = {"vector": payload[self.vector], "metadata": self._meta(payload)}
        return Upsert(key, document, position)

    def _run(self, batch: PayloadBatch, start: int, stop: int) -> VectorRun:
        payloads = batch.payloads[start:stop]
        field = self.vector
        try:
            vectors = [p[field] for p in payloads]
        except (KeyError, TypeError):
            bad = next(i for i, p in enumerate(payloads) if type(p) is not dict or field not in p)
            raise self._missing(batch.positions[start + bad]) from None
        metadata: list[Mapping[str, Any] | None] | None = None
        if self.metadata:
            metadata = [self._meta(p) for p in payloads]
        return VectorRun(batch.keys[start:stop], vectors, metadata, batch.positions[start:stop])

    def _meta(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        if not self.metadata:
            return None
        get = payload.get
        return {name: get(name) for name in self.metadata}

    def _missing(self, position: int | None) -> ProjectionError:
        return ProjectionError(f"the event at position {position} has no {self.vector!r} field")
