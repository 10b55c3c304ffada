"""Elasticsearch as a projection sink: external versions, tombstones and a filtered alias.

* Each version is a concrete index ``{index_prefix}{name}_v{version}``; readers use the alias
  ``{index_prefix}{name}``. A flip is one ``_aliases`` call that removes the alias from the old
  index and adds it to the new one: atomic in Elasticsearch.
* Every write is ``version=position, version_type=external``: Elasticsearch itself refuses a
  write whose position is not newer than the stored one (409), so duplicates, late events and
  replays change nothing. In a bulk response a 409 is such a refusal, not a failure.
* A bulk answers per item, in order: a 409 is a refusal of an older position (not a failure),
  a 429/503 means "not now" (the call raises :class:`BackendUnavailableError` and the projector
  writes the batch again later, which the external versions make harmless), and any other
  refusal (a document the mapping rejects: 400 ``document_parsing_exception``) is that one
  change's fault: the call applies every other item and raises :class:`RejectedChangesError`
  naming the refused positions, which the projector parks.
* A delete is a tombstone document ``{"sat_tombstone": true}`` written the same way, not an
  Elasticsearch delete: a real delete's version is forgotten after ``index.gc_deletes`` (60 s),
  after which a late upsert would bring the document back. The alias carries a filter that hides
  tombstones, so searches through it never see them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from elasticsearch import AsyncElasticsearch, NotFoundError
from elasticsearch.exceptions import ApiError
from elasticsearch.helpers import async_bulk, async_scan, async_streaming_bulk

from ..errors import BackendUnavailableError, ProjectionError, RejectedChangesError
from ..faults import TRANSIENT_STATUS
from .model import Change, Projection, Upsert
from .sinks import Fix, Held, SinkDump, chunked, translated

__all__ = ["TOMBSTONE", "ElasticsearchSink"]

TOMBSTONE = "sat_tombstone"
_HIDE_TOMBSTONES = {"bool": {"must_not": {"term": {TOMBSTONE: True}}}}
CHUNK = 1000


class ElasticsearchSink:
    kind = "elasticsearch"

    def __init__(self, client: AsyncElasticsearch, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def index(self, projection: Projection, version: int) -> str:
        return f"{self.prefix}{projection.target(version)}"

    def alias(self, projection: Projection) -> str:
        return f"{self.prefix}{projection.name}"

    async def prepare(self, projection: Projection, version: int) -> None:
        body = dict(projection.options)
        mappings = dict(body.pop("mappings", {}) or {})
        props = dict(mappings.get("properties", {}))
        props[TOMBSTONE] = {"type": "boolean"}
        mappings["properties"] = props
        index = self.index(projection, version)
        with translated("elasticsearch", f"create {index}"):
            try:
                if not await self.client.indices.exists(index=index):
                    await self.client.indices.create(index=index, mappings=mappings, **body)
            except ApiError as exc:
                if "resource_already_exists" not in str(exc):
                    raise

    async def apply(self, projection: Projection, version: int, changes: Sequence[Change]) -> int:
        index = self.index(projection, version)
        actions = [self._action(index, c) for c in changes]
        applied = 0
        rejected: dict[int, str] = {}
        busy: list[str] = []
        with translated("elasticsearch", f"bulk write to {index}"):
            results = async_streaming_bulk(
                self.client, actions, chunk_size=CHUNK, raise_on_error=False,
                raise_on_exception=True, yield_ok=True, max_retries=0,
            )  # fmt: skip
            position = iter(changes)
            async for ok, item in results:
                change = next(position)
                if ok:
                    applied += 1
                    continue
                status, reason = _status(item), _reason(item)
                if status == 409:  # an older position than the stored one: a no-op
                    continue
                if status in TRANSIENT_STATUS:
                    busy.append(f"{status} {reason}")
                else:
                    rejected[change.position] = f"{status} {reason}"
        if busy:
            raise BackendUnavailableError(
                "elasticsearch", f"bulk write to {index}: {len(busy)} item(s) refused for now, "
                f"first: {busy[0]}"
            )  # fmt: skip
        if rejected:
            raise RejectedChangesError(f"elasticsearch index {index}", rejected, applied)
        return applied

    @staticmethod
    def _action(index: str, change: Change) -> dict[str, Any]:
        source = dict(change.document) if isinstance(change, Upsert) else {TOMBSTONE: True}
        return {
            "_op_type": "index",
            "_index": index,
            "_id": change.key,
            "version": change.position,
            "version_type": "external",
            "_source": source,
        }

    async def activate(self, projection: Projection, version: int) -> None:
        alias, index = self.alias(projection), self.index(projection, version)
        actions: list[dict[str, Any]] = [
            {"remove": {"index": old, "alias": alias}} for old in await self._holders(alias)
        ]
        actions.append(
            {
                "add": {
                    "index": index,
                    "alias": alias,
                    "filter": _HIDE_TOMBSTONES,
                    "is_write_index": True,
                }
            }
        )
        with translated("elasticsearch", f"flip {alias} to {index}"):
            await self.client.indices.update_aliases(actions=actions)

    async def _holders(self, alias: str) -> list[str]:
        with translated("elasticsearch", f"look up alias {alias}"):
            try:
                found = await self.client.indices.get_alias(name=alias)
            except NotFoundError:
                return []
        return list(found.body)

    async def active_version(self, projection: Projection) -> int | None:
        holders = await self._holders(self.alias(projection))
        if not holders:
            return None
        return int(holders[0].rsplit("_v", 1)[1])

    async def drop(self, projection: Projection, version: int) -> None:
        index = self.index(projection, version)
        with translated("elasticsearch", f"drop {index}"):
            await self.client.indices.delete(index=index, ignore_unavailable=True)

    async def dump(self, projection: Projection, version: int) -> SinkDump:
        index = self.index(projection, version)
        out: SinkDump = {}
        with translated("elasticsearch", f"dump {index}"):
            await self.client.indices.refresh(index=index)
            query: dict[str, Any] = {"query": {"match_all": {}}}
            async for hit in async_scan(self.client, index=index, query=query):
                src: Mapping[str, Any] = hit["_source"]
                out[hit["_id"]] = None if src.get(TOMBSTONE) else dict(src)
        return out

    async def local_checkpoint(self, projection: Projection, version: int) -> int | None:
        return None

    async def flush(self, projection: Projection, version: int) -> None:
        return None  # every write is already durable in the store

    # -- audit: read keys with their positions (external versions), repair single keys -------------

    async def scan_keys(
        self, projection: Projection, version: int, chunk: int
    ) -> AsyncIterator[list[str]]:
        index = self.index(projection, version)
        with translated("elasticsearch", f"scan {index}"):
            await self.client.indices.refresh(index=index)
            hits = async_scan(self.client, index=index, size=chunk, _source=False,
                              query={"query": {"match_all": {}}})  # fmt: skip
            async for batch in chunked((hit["_id"] async for hit in hits), chunk):
                yield batch

    async def read_keys(
        self, projection: Projection, version: int, keys: Sequence[str]
    ) -> dict[str, Held]:
        index = self.index(projection, version)
        if not keys:
            return {}
        with translated("elasticsearch", f"read keys of {index}"):
            found = await self.client.mget(index=index, ids=list(keys), realtime=True)
        out: dict[str, Held] = {}
        for doc in found["docs"]:
            if doc.get("found"):
                src: Mapping[str, Any] = doc.get("_source", {})
                held = None if src.get(TOMBSTONE) else dict(src)
                out[doc["_id"]] = Held(int(doc["_version"]), held)
        return out

    def same(
        self, projection: Projection, expected: Mapping[str, Any] | None,
        held: Mapping[str, Any] | None,
    ) -> bool:  # fmt: skip
        return _normal(expected) == _normal(held)

    async def repair(self, projection: Projection, version: int, fixes: Sequence[Fix]) -> int:
        """Rewrite each key with ``version_type=external_gte`` at the highest of its log
        position, the version it holds and the version's checkpoint (``Fix.floor``).

        Elasticsearch cannot lower a document's version, and a deleted document's version is
        kept for ``index.gc_deletes``, so a write at exactly the log position would be refused
        for a document someone pushed up or deleted. Any version from the key's last event up to
        the log's head gives the same effect: no earlier event applies, and every later event
        has a higher position and still does. A document changed since the audit read it holds a
        higher version still, and its write is refused (409) and left alone."""
        index = self.index(projection, version)
        actions: list[dict[str, Any]] = []
        for f in fixes:
            seen = 0 if f.seen is None or f.seen.position is None else f.seen.position
            seen = max(seen, f.floor)
            if f.want is None:
                actions.append({"_op_type": "delete", "_index": index, "_id": f.key})
                continue
            action = self._action(index, f.want)
            action.update(version=max(f.want.position, seen), version_type="external_gte")
            actions.append(action)
        with translated("elasticsearch", f"repair {index}"):
            ok, errors = await async_bulk(self.client, actions, chunk_size=CHUNK,
                                          raise_on_error=False, stats_only=False)  # fmt: skip
        failures = [e for e in errors if _status(e) not in (404, 409)]  # type: ignore[union-attr]
        if failures:
            raise ProjectionError(f"elasticsearch repair of {index}: {failures[:3]}")
        await self.client.indices.refresh(index=index)
        return int(ok)


def _status(item: Mapping[str, Any]) -> int:
    for detail in item.values():
        return int(detail.get("status", 0))
    return 0


def _reason(item: Mapping[str, Any]) -> str:
    """One line for a refused bulk item: the error's type and reason (and its cause's)."""
    for detail in item.values():
        error = detail.get("error")
        if not isinstance(error, Mapping):
            return str(error)
        text = f"{error.get('type')}: {error.get('reason')}"
        cause = error.get("caused_by")
        if isinstance(cause, Mapping):
            text += f" ({cause.get('type')}: {cause.get('reason')})"
        return text
    return "no detail"


def _normal(document: Mapping[str, Any] | None) -> str | None:
    """A document as JSON with sorted keys: what equality of two sources means."""
    return None if document is None else json.dumps(document, sort_keys=True)
