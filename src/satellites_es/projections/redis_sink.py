"""Redis as a projection sink: one hash per key, written only by a newer position.

Layout, under the configured key prefix ``P``:

* ``P{name}_v{version}:{key}``: a hash ``{p: position, d: JSON document}``, or for a tombstone
  ``{p: position, x: 1}``;
* ``P{name}:active``: the active version (the blue/green pointer; a flip is one ``SET``).

Every batch goes through one Lua script (atomic per call) that compares the stored ``p`` with the
change's position and writes only when the change is newer: a duplicate, a late or a replayed
event changes nothing, and a late upsert after a delete stays deleted. The script touches several
keys, so on Redis Cluster the projection's keys would need one hash slot; we target a single
primary (or a proxy), as most caches do.

TTL: documents may expire (``Projection.ttl_seconds``), as a cache's should; tombstones never
expire, so a late upsert cannot bring back a deleted key. An expired document is filled again by
the next event for its key, or by a rebuild.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from .model import Change, Projection, Upsert
from .sinks import Fix, Held, SinkDump, chunked, translated

__all__ = ["RedisSink"]

_APPLY = """
local applied = 0
for i, key in ipairs(KEYS) do
  local base = (i - 1) * 3
  local pos = tonumber(ARGV[base + 1])
  local doc = ARGV[base + 2]
  local ttl = tonumber(ARGV[base + 3])
  local cur = tonumber(redis.call('HGET', key, 'p') or '-1')
  if pos > cur then
    if doc == '' then
      redis.call('DEL', key)
      redis.call('HSET', key, 'p', pos, 'x', '1')
    else
      redis.call('HSET', key, 'p', pos, 'd', doc)
      redis.call('HDEL', key, 'x')
      if ttl > 0 then redis.call('EXPIRE', key, ttl) else redis.call('PERSIST', key) end
    end
    applied = applied + 1
  end
end
return applied
"""

CHUNK = 500


class RedisSink:
    kind = "redis"

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._script = client.register_script(_APPLY)

    def key(self, projection: Projection, version: int, key: str) -> str:
        return f"{self.prefix}{projection.target(version)}:{key}"

    def pointer(self, projection: Projection) -> str:
        return f"{self.prefix}{projection.name}:active"

    async def prepare(self, projection: Projection, version: int) -> None:
        return None  # hashes are created by the first write

    async def apply(self, projection: Projection, version: int, changes: Sequence[Change]) -> int:
        ttl = projection.ttl_seconds or 0
        applied = 0
        with translated("redis", f"apply to {projection.target(version)}"):
            for start in range(0, len(changes), CHUNK):
                chunk = changes[start : start + CHUNK]
                keys = [self.key(projection, version, c.key) for c in chunk]
                args: list[Any] = []
                for c in chunk:
                    doc = (
                        json.dumps(c.document, separators=(",", ":"))
                        if isinstance(c, Upsert)
                        else ""
                    )
                    args += [c.position, doc, ttl]
                applied += int(await self._script(keys=keys, args=args))
        return applied

    async def activate(self, projection: Projection, version: int) -> None:
        with translated("redis", f"activate {projection.target(version)}"):
            await self.client.set(self.pointer(projection), str(version))

    async def active_version(self, projection: Projection) -> int | None:
        with translated("redis", f"read the active version of {projection.name}"):
            raw = await self.client.get(self.pointer(projection))
        return None if raw is None else int(raw)

    async def get(self, projection: Projection, key: str) -> Mapping[str, Any] | None:
        """Read one cached document from the active version (None if absent or deleted)."""
        version = await self.active_version(projection)
        if version is None:
            return None
        with translated("redis", f"read {key!r} of {projection.target(version)}"):
            raw = await self.client.hget(self.key(projection, version, key), "d")
        return None if raw is None else dict(json.loads(raw))

    async def drop(self, projection: Projection, version: int) -> None:
        pattern = self.key(projection, version, "*")
        batch: list[Any] = []
        with translated("redis", f"drop {projection.target(version)}"):
            async for k in self.client.scan_iter(match=pattern, count=1000):
                batch.append(k)
                if len(batch) >= 1000:
                    await self.client.unlink(*batch)
                    batch.clear()
            if batch:
                await self.client.unlink(*batch)

    async def dump(self, projection: Projection, version: int) -> SinkDump:
        head = len(self.key(projection, version, ""))
        out: SinkDump = {}
        pattern = self.key(projection, version, "*")
        with translated("redis", f"dump {projection.target(version)}"):
            async for k in self.client.scan_iter(match=pattern, count=1000):
                fields = await self.client.hgetall(k)
                name = (k.decode() if isinstance(k, bytes) else k)[head:]
                doc = fields.get(b"d")
                out[name] = None if doc is None else dict(json.loads(doc))
        return out

    async def local_checkpoint(self, projection: Projection, version: int) -> int | None:
        return None

    async def flush(self, projection: Projection, version: int) -> None:
        return None  # every write is already durable in the store

    # -- audit: read keys with their positions, repair single keys ---------------------------------

    async def scan_keys(
        self, projection: Projection, version: int, chunk: int
    ) -> AsyncIterator[list[str]]:
        head = len(self.key(projection, version, ""))
        with translated("redis", f"scan {projection.target(version)}"):
            found = self.client.scan_iter(match=self.key(projection, version, "*"), count=chunk)
            names = ((k.decode() if isinstance(k, bytes) else k)[head:] async for k in found)
            async for batch in chunked(names, chunk):
                yield batch

    async def read_keys(
        self, projection: Projection, version: int, keys: Sequence[str]
    ) -> dict[str, Held]:
        with translated("redis", f"read keys of {projection.target(version)}"):
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(self.key(projection, version, key))
                found = await pipe.execute(raise_on_error=False)  # a key of another type: WRONGTYPE
        return {key: _held(fields) for key, fields in zip(keys, found, strict=True) if fields}

    def same(
        self, projection: Projection, expected: Mapping[str, Any] | None,
        held: Mapping[str, Any] | None,
    ) -> bool:  # fmt: skip
        return _as_stored(expected) == _as_stored(held)

    async def repair(self, projection: Projection, version: int, fixes: Sequence[Fix]) -> int:
        """One compare-and-set script per chunk: a key is rewritten only if its position is still
        the one the audit read (a live projector's newer write wins)."""
        ttl = projection.ttl_seconds or 0
        written = 0
        with translated("redis", f"repair {projection.target(version)}"):
            for start in range(0, len(fixes), CHUNK):
                chunk = fixes[start : start + CHUNK]
                args: list[Any] = []
                for f in chunk:
                    seen = "" if f.seen is None or f.seen.position is None else f.seen.position
                    if f.want is None:
                        args += [seen, 0, _REMOVE, ttl]
                    else:
                        doc = _as_stored(f.want.document if isinstance(f.want, Upsert) else None)
                        args += [seen, f.want.position, doc or "", ttl]
                keys = [self.key(projection, version, f.key) for f in chunk]
                written += int(await self._repair_script(keys=keys, args=args))
        return written

    @property
    def _repair_script(self) -> Any:
        script = getattr(self, "_repair", None)
        if script is None:
            script = self._repair = self.client.register_script(_REPAIR)
        return script


#: ARGV per key: the position the audit saw ('' = none), the position to write, the document
#: ('' = tombstone, _REMOVE = remove the key), the TTL.
_REMOVE = "\x00remove"
_REPAIR = """
local written = 0
for i, key in ipairs(KEYS) do
  local base = (i - 1) * 4
  local seen = ARGV[base + 1]
  local cur = ''
  if redis.call('TYPE', key).ok == 'hash' then cur = redis.call('HGET', key, 'p') or '' end
  if cur == seen then
    local pos, doc, ttl = ARGV[base + 2], ARGV[base + 3], tonumber(ARGV[base + 4])
    redis.call('DEL', key)
    if doc == '' then
      redis.call('HSET', key, 'p', pos, 'x', '1')
    elseif doc ~= '\\0remove' then
      redis.call('HSET', key, 'p', pos, 'd', doc)
      if ttl > 0 then redis.call('EXPIRE', key, ttl) end
    end
    written = written + 1
  end
end
return written
"""


def _held(fields: Mapping[bytes, bytes] | Exception) -> Held:
    if isinstance(fields, Exception):  # not a hash: written by someone else
        return Held(None, {"<not a projection hash>": str(fields)})
    raw = fields.get(b"p")
    position = int(raw) if raw is not None and raw.lstrip(b"-").isdigit() else None
    if b"x" in fields:
        return Held(position, None)
    doc = fields.get(b"d")
    try:
        document = None if doc is None else dict(json.loads(doc))
    except (ValueError, TypeError):
        document = {"<unreadable>": doc.decode(errors="replace") if doc else ""}
    return Held(position, document if document is not None else {"<no document>": True})


def _as_stored(document: Mapping[str, Any] | None) -> str | None:
    """A document as the sink stores it (compact JSON): what equality means here."""
    return None if document is None else json.dumps(document, separators=(",", ":"), sort_keys=True)
