"""A change set: semantic operations committed as events in one append.

::

    changes = docs.changeset()
    changes.put_document("doc-1", {"title": "...", "body": "...", "topic": "search"})
    changes.put_document("doc-2", fields, embedding=vector)       # computed elsewhere
    changes.delete_document("doc-0")
    changes.put_entity("author-7", {"name": "Ada"})
    committed = await changes.commit()                            # one append: all or nothing
    hits = await docs.search("...", consistent_at=committed.position)

``commit`` checks every operation first (a bad document raises
:class:`~satellites_es.errors.InvalidDocumentError` naming it, and nothing is written), then
embeds the documents that came without an embedding, in batches, with the collection's write
embedder, stores each vector (``f32:<base64>``, :mod:`satellites_es.vectors.codec`) with its
embedder's name in the event, and appends every event in *one* ``EventStore.append``: the log
stores all of them or none (an error from the store, a payload too large say, also stores
nothing). Each event is routed by its type to the projections that serve it
(:meth:`SemanticSchema.routes`).

**Positions.** Without ``conn`` the append commits at once and :attr:`Committed.position` is the
last position. With ``conn=`` (the caller's transaction) the events commit with that transaction
and the log numbers them after it (issue #13): ``position`` is None until then, and
``await committed.sequenced()`` once the transaction has committed returns it (it asks the log,
``EventStore.sequenced``; :class:`~satellites_es.errors.PersistenceError` if the transaction
did not commit).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import numpy as np
import numpy.typing as npt
from asyncpg.pool import PoolConnectionProxy

from ..envelope import EMPTY
from ..errors import InvalidDocumentError, PersistenceError
from ..events import DataEvent, built_event
from ..store import AppendResult, EventStore
from ..vectors.codec import encode_matrix, encode_vector
from .embedders import Embedder, Matrix, embed_checked
from .schema import EMBEDDER_FIELD, EMBEDDING_FIELD

if TYPE_CHECKING:
    from .store import SemanticStore

__all__ = ["ChangeSet", "Committed", "Operation"]

#: Texts per embedder call at commit.
EMBED_BATCH = 256
SOURCE = "satellites-es.semantic"


@dataclass(frozen=True)
class Operation:
    """One semantic operation: ``kind`` document or entity, ``action`` upserted or deleted."""

    kind: str
    action: str
    id: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    embedding: npt.NDArray[np.float32] | None = None
    embedder: str | None = None


@dataclass(frozen=True)
class Committed:
    """What a commit stored: the append's result and the projections it reaches."""

    result: AppendResult
    routes: tuple[str, ...]
    store: EventStore = field(repr=False, compare=False)

    @property
    def position(self) -> int | None:
        """The last position, or None while the caller's transaction has not committed."""
        positions = [e.position for e in self.result.events]
        if not positions or any(p is None for p in positions):
            return None
        return max(p for p in positions if p is not None)

    async def sequenced(self) -> int:
        """The last position, once the events are committed (see the module docstring)."""
        known = self.position
        if known is not None:
            return known
        resolved = await self.store.sequenced(self.result)
        position = Committed(resolved, self.routes, self.store).position
        if position is None:
            raise PersistenceError("the change set's transaction has not committed")
        return position


class ChangeSet:
    """Semantic operations to commit together (see the module docstring)."""

    def __init__(self, owner: SemanticStore) -> None:
        self._owner = owner
        self._ops: list[Operation] = []

    def __len__(self) -> int:
        return len(self._ops)

    def put_document(
        self, id: str, fields: Mapping[str, Any], *,
        embedding: Sequence[float] | npt.NDArray[Any] | None = None, embedder: str | None = None,
    ) -> ChangeSet:  # fmt: skip
        """Insert or replace a document. ``embedding``: its vector, made by ``embedder`` (the
        collection's write embedder when not named); computed at commit when None."""
        vector = None if embedding is None else np.asarray(embedding, dtype=np.float32)
        self._ops.append(Operation("document", "upserted", id, dict(fields), vector, embedder))
        return self

    def delete_document(self, id: str) -> ChangeSet:
        self._ops.append(Operation("document", "deleted", id))
        return self

    def put_entity(self, id: str, fields: Mapping[str, Any]) -> ChangeSet:
        self._ops.append(Operation("entity", "upserted", id, dict(fields)))
        return self

    def delete_entity(self, id: str) -> ChangeSet:
        self._ops.append(Operation("entity", "deleted", id))
        return self

    async def commit(
        self,
        *,
        conn: asyncpg.Connection[asyncpg.Record]
        | PoolConnectionProxy[asyncpg.Record]
        | None = None,
    ) -> Committed:
        """Check, embed and append every operation as one append (see the module docstring)."""
        owner = self._owner
        store = owner.data.log
        if not self._ops:
            return Committed(AppendResult(events=()), (), store)
        embedder = await owner.write_embedder()
        for index, op in enumerate(self._ops):
            self._check(index, op, embedder)
        events = await self.events(embedder)
        result = await store.append(events, conn=conn)
        schema = owner.schema
        routes = tuple(dict.fromkeys(r for e in events for r in schema.routes(e.type)))
        self._ops = []
        return Committed(result, routes, store)

    async def events(self, embedder: Embedder) -> list[DataEvent]:
        """The operations as events, with the missing embeddings computed in batches."""
        schema = self._owner.schema
        todo = [i for i, op in enumerate(self._ops)
                if op.kind == "document" and op.action == "upserted" and op.embedding is None]  # fmt: skip
        vectors: dict[int, str] = {}
        chunks = [todo[s : s + EMBED_BATCH] for s in range(0, len(todo), EMBED_BATCH)]
        # The next batch is embedded (in the model's thread) while this one is encoded here.
        ahead: asyncio.Future[Matrix] | None = None
        for n, chunk in enumerate(chunks):
            if ahead is None:
                ahead = asyncio.ensure_future(self._embed(embedder, chunk))
            matrix = await ahead
            ahead = None
            if n + 1 < len(chunks):
                ahead = asyncio.ensure_future(self._embed(embedder, chunks[n + 1]))
            try:
                vectors.update(zip(chunk, encode_matrix(matrix), strict=True))
            except BaseException:
                if ahead is not None:
                    ahead.cancel()
                raise
        events = []
        # One moment for the whole change set, and its ids from one read of the OS's random
        # source: per event, uuid4() and datetime.now() cost as much as encoding its vector.
        # Every field below was checked when its operation was added (_check) or is the
        # schema's own, so the events are built without DataEvent's checks (the append runs
        # them again).
        now, ids = datetime.now(UTC), _uuid4s(len(self._ops))
        for i, op in enumerate(self._ops):
            payload: dict[str, Any] = dict(op.fields)
            if op.kind == "document" and op.action == "upserted":
                if op.embedding is not None:
                    payload[EMBEDDING_FIELD] = encode_vector(op.embedding)
                    payload[EMBEDDER_FIELD] = op.embedder or embedder.name
                else:
                    payload[EMBEDDING_FIELD] = vectors[i]
                    payload[EMBEDDER_FIELD] = embedder.name
            resource = schema.document_resource if op.kind == "document" else schema.entity_resource
            events.append(built_event(type=schema.event_type(op.kind, op.action), resource=resource,
                                      key=op.id, payload=payload, source=SOURCE, timestamp=now,
                                      version=None, id=ids[i], position=None, metadata=EMPTY,
                                      schema_version=1))  # fmt: skip
        return events

    async def _embed(self, embedder: Embedder, chunk: list[int]) -> Matrix:
        texts = [self._owner.schema.embed_text(self._ops[i].fields) for i in chunk]
        return await embed_checked(embedder, texts)

    def _check(self, index: int, op: Operation, embedder: Embedder) -> None:
        """Refuse a malformed operation before anything is embedded or written."""
        where = f"operation {index} ({op.kind} {op.action} {op.id!r})"
        if not isinstance(op.id, str) or not op.id or len(op.id) > 512:
            raise InvalidDocumentError(f"{where}: the id must be a non-empty string")
        schema = self._owner.schema
        if op.action == "deleted":
            return
        reserved = {EMBEDDING_FIELD, EMBEDDER_FIELD}.intersection(op.fields)
        if reserved:
            raise InvalidDocumentError(f"{where}: {sorted(reserved)} are set by the layer")
        try:
            json.dumps(op.fields, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidDocumentError(f"{where}: fields are not JSON: {exc}") from exc
        if op.kind == "entity":
            return
        for name in schema.text_fields:
            value = op.fields.get(name)
            if value is not None and not isinstance(value, str):
                raise InvalidDocumentError(f"{where}: text field {name!r} is not a string")
        if not schema.embed_text(op.fields).strip():
            raise InvalidDocumentError(f"{where}: no text in {list(schema.embed_fields)}")
        if op.embedding is not None:
            self._check_vector(where, op, embedder)

    def _check_vector(self, where: str, op: Operation, embedder: Embedder) -> None:
        vector = op.embedding
        assert vector is not None
        own = op.embedder in (None, embedder.name)
        if vector.ndim != 1 or (own and vector.shape[0] != embedder.dimension):
            raise InvalidDocumentError(
                f"{where}: embedding of shape {vector.shape}, expected ({embedder.dimension},)"
            )
        if not all(math.isfinite(x) for x in vector.tolist()):
            raise InvalidDocumentError(f"{where}: embedding holds NaN or infinity")


def _uuid4s(n: int) -> list[str]:
    """``n`` random (version 4) UUIDs as strings, as ``str(uuid.uuid4())`` gives them."""
    raw = bytearray(os.urandom(16 * n))
    out = []
    for start in range(0, len(raw), 16):
        raw[start + 6] = (raw[start + 6] & 0x0F) | 0x40  # version 4
        raw[start + 8] = (raw[start + 8] & 0x3F) | 0x80  # RFC 4122 variant
        h = raw[start : start + 16].hex()
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out
