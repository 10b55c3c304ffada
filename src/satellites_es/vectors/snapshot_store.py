"""FAISS snapshots in object storage: one snapshotter publishes them, replicas download them.

Layout under ``FaissConfig.snapshot_url`` (``s3://bucket/prefix``, or ``file:///dir`` for a
shared volume)::

    <namespace>/POINTER                        JSON: the kept snapshots, newest first, each with
                                               its id, its manifest's sha256 and its position
    <namespace>/snapshots/<id>/index.faiss     the files of a local snapshot, byte for byte
    <namespace>/snapshots/<id>/meta.json       (:func:`~.persistence.encode_snapshot`)
    <namespace>/snapshots/<id>/MANIFEST.json

**Publishing** (:meth:`SnapshotStore.publish`) uploads the index and the metadata, then the
manifest, then rewrites ``POINTER``: an object store has no rename, so the pointer is the commit
point, as ``CURRENT`` is on disk. A snapshotter killed before it leaves the pointer naming the
previous complete snapshot; the objects it left are removed by a later publish. Only then are
snapshots beyond ``keep`` deleted, and only objects we made: ids of our pattern, file names of
our snapshots, under this namespace.

**Reading** trusts nothing: the pointer must parse, the manifest must hash to what the pointer
says, each file must have the manifest's size and sha256, and the index must agree with the
metadata (:func:`~.persistence.decode_snapshot`, the same checks as a local load); a failure is
a :class:`~satellites_es.errors.CorruptIndexError` naming the object's URL. The pointer lists
every kept snapshot with its manifest's hash, so a refused snapshot's predecessor is verified as
strictly as the newest.

**Client**: obstore (pyproject.toml says why). Credentials come from its standard AWS chain
(``AWS_*`` variables, web identity, container and instance metadata), never from our
configuration, so they cannot reach a log or an error; messages name only the URL. Every
failure of the store itself (unreachable, refused, timed out, denied) is a
:class:`~satellites_es.errors.BackendUnavailableError` for the backend ``object_store``.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

import obstore
from obstore.exceptions import AlreadyExistsError, PreconditionError
from obstore.store import LocalStore, S3Store

from ..config import FaissConfig, redact_url
from ..errors import BackendUnavailableError, ConfigurationError, CorruptIndexError
from .persistence import (
    FILES,
    INDEX_FILE,
    MANIFEST_FILE,
    META_FILE,
    Chunks,
    is_safe_name,
    manifest_sha256,
)
from .validation import check_namespace

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

__all__ = ["BACKEND", "POINTER", "Download", "Pointer", "RemoteSnapshot", "SnapshotStore"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

BACKEND = "object_store"
POINTER = "POINTER"
POINTER_FORMAT = 1
#: Conditional rewrites of a pointer that another publisher keeps changing, before giving up.
POINTER_TRIES = 3
_ID = re.compile(r"(\d{9})-[0-9a-f]{8}")
#: Parts of a multipart upload, and how many go at once (obstore's ``put`` parameters).
CHUNK_SIZE = 16 * 1024 * 1024
MAX_CONCURRENCY = 4
#: A download reports progress at least every this many bytes.
STREAM_CHUNK = 8 * 1024 * 1024
#: At exit, how long to wait at most for the client's native threads to leave Python.
EXIT_GRACE = 2.0

Progress = Callable[[int], None]


@dataclass(frozen=True)
class RemoteSnapshot:
    """One snapshot named by a pointer."""

    id: str
    manifest_sha256: str
    position: int  # the last log position it holds
    count: int  # live vectors
    bytes: int  # its three files together
    created: str  # ISO 8601, UTC

    @property
    def seq(self) -> int:
        return int(self.id.split("-", 1)[0])


@dataclass(frozen=True)
class Download:
    """A snapshot's files as downloaded, with the sha256 of each computed on the way."""

    files: dict[str, Chunks]
    sha256: dict[str, str]


@dataclass(frozen=True)
class Pointer:
    """A namespace's ``POINTER``: the snapshots kept, newest first."""

    namespace: str
    snapshots: tuple[RemoteSnapshot, ...]

    def encode(self) -> bytes:
        body = {"format": POINTER_FORMAT, "namespace": self.namespace,
                "snapshots": [asdict(s) for s in self.snapshots]}  # fmt: skip
        return json.dumps(body, indent=1).encode()

    @classmethod
    def decode(cls, where: str, namespace: str, data: bytes) -> Pointer:
        try:
            raw = json.loads(data)
            if raw["format"] != POINTER_FORMAT:
                raise ValueError(f"unknown format {raw['format']!r}")
            snapshots = tuple(RemoteSnapshot(**s) for s in raw["snapshots"])
            if raw["namespace"] != namespace or not all(_ID.fullmatch(s.id) for s in snapshots):
                raise ValueError("another namespace's pointer, or a snapshot id not ours")
        except Exception as exc:  # JSON, keys, types: the pointer cannot be trusted
            raise CorruptIndexError(where, f"invalid pointer: {exc!r}") from exc
        return cls(namespace, snapshots)


class SnapshotStore:
    """Snapshots of namespaces under one ``s3://`` or ``file://`` URL (module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        endpoint: str | None = None,
        keep: int = 3,
        connect_timeout: float = 3.0,
        retries: int = 2,
    ) -> None:
        self.url = url.rstrip("/")
        self.keep = keep
        self._store = _open(self.url, endpoint, connect_timeout, retries)

    @classmethod
    def from_config(cls, config: FaissConfig) -> SnapshotStore | None:
        """The configured store, or None when ``snapshot_url`` is not set."""
        if config.snapshot_url is None:
            return None
        return cls(config.snapshot_url, endpoint=config.snapshot_endpoint,
                   keep=config.snapshot_keep)  # fmt: skip

    def where(self, key: str) -> str:
        """The URL of an object, for messages (never holds a credential)."""
        return redact_url(f"{self.url}/{key}")

    # ---- reading --------------------------------------------------------------------------

    async def pointer(self, namespace: str) -> Pointer | None:
        """The namespace's pointer; None if nothing was ever published for it."""
        return (await self._pointer(namespace))[0]

    async def _pointer(self, namespace: str) -> tuple[Pointer | None, str | None]:
        """The pointer and its ETag (what a conditional rewrite of it names)."""
        key = f"{check_namespace(namespace)}/{POINTER}"
        what = f"read {self.where(key)}"
        try:
            result = await _translated(what, obstore.get_async(self._store, key))
        except FileNotFoundError:
            return None, None
        data = bytes(await _translated(what, result.bytes_async()))
        return Pointer.decode(self.where(key), namespace, data), result.meta.get("e_tag")

    async def namespaces(self) -> list[str]:
        """Namespaces with a pointer in the store."""
        listed = await self._call("list the namespaces",
                                  obstore.list_with_delimiter_async(self._store))  # fmt: skip
        out = []
        for prefix in listed["common_prefixes"]:
            name = prefix.rstrip("/").rsplit("/", 1)[-1]
            if is_safe_name(name) and await self.pointer(name) is not None:
                out.append(name)
        return sorted(out)

    async def download(
        self, namespace: str, snapshot: RemoteSnapshot, progress: Progress | None = None
    ) -> Download:
        """The three files of ``snapshot`` at once (see :meth:`fetch`)."""
        got = await asyncio.gather(*(self.fetch(namespace, snapshot, f, progress) for f in FILES))
        return Download({f: data for f, (data, _) in zip(FILES, got, strict=True)},
                        {f: digest for f, (_, digest) in zip(FILES, got, strict=True)})  # fmt: skip

    async def fetch(
        self, namespace: str, snapshot: RemoteSnapshot, file: str, progress: Progress | None = None
    ) -> tuple[Chunks, str]:
        """One file of ``snapshot`` as stored, with its sha256 computed as it arrives (verify it
        with :mod:`.persistence`'s ``decode_*``); a missing one is a :class:`CorruptIndexError`
        naming it."""
        key = f"{self._base(namespace, snapshot.id)}/{file}"
        got = await self._get_hashed(key, progress)
        if got is None:
            raise CorruptIndexError(self.where(key), "missing from the store")
        return got

    def describe(self, namespace: str, snapshot: RemoteSnapshot) -> Callable[[str], str]:
        """``where`` for ``decode_snapshot``: a file's object URL."""
        base = self._base(namespace, snapshot.id)
        return lambda file: self.where(f"{base}/{file}")

    # ---- writing --------------------------------------------------------------------------

    async def publish(
        self, namespace: str, files: Mapping[str, bytes], *, position: int, count: int
    ) -> RemoteSnapshot | None:
        """Upload a snapshot of ``namespace`` (its :func:`encode_snapshot` files, which hold
        ``count`` vectors up to log ``position``), publish it, prune the old ones. Returns None,
        and publishes nothing, when the store holds a snapshot at or past ``position``.

        The pointer is rewritten only if it is still the one read before the upload (S3's
        ``If-Match``, ``If-None-Match`` for the first; a ``file://`` store cannot, and relies on
        the snapshotter's lease alone): two publishers racing (a leader that lost its lease
        without knowing yet) never move it back to an older position or drop the other's entry.
        """
        previous, etag = await self._pointer(namespace)
        kept = previous.snapshots if previous is not None else ()
        if self._newer(namespace, kept, position):
            return None
        seq = max((s.seq for s in kept), default=0) + 1
        snapshot = RemoteSnapshot(
            id=f"{seq:09d}-{uuid.uuid4().hex[:8]}", manifest_sha256=manifest_sha256(files),
            position=position, count=count, bytes=sum(len(files[f]) for f in FILES),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )  # fmt: skip
        base = self._base(namespace, snapshot.id)
        await asyncio.gather(*(self._put(f"{base}/{f}", files[f]) for f in (INDEX_FILE, META_FILE)))
        await self._put(f"{base}/{MANIFEST_FILE}", files[MANIFEST_FILE])
        for _ in range(POINTER_TRIES):
            pointer = Pointer(namespace, (snapshot, *kept[: self.keep - 1]))
            if await self._put_pointer(namespace, pointer, etag):  # the commit point
                await self._prune(namespace, pointer, below=seq)
                return snapshot
            previous, etag = await self._pointer(namespace)  # another published meanwhile
            kept = previous.snapshots if previous is not None else ()
            if self._newer(namespace, kept, position):
                return None  # our files are pruned by a later publish
        raise BackendUnavailableError(BACKEND, f"{self.where(f'{namespace}/{POINTER}')} changed "
                                      f"under {POINTER_TRIES} tries to publish")  # fmt: skip

    def _newer(self, namespace: str, kept: tuple[RemoteSnapshot, ...], position: int) -> bool:
        if kept and kept[0].position >= position:
            logger.info("snapshot of %s at %d not published: %s is at %d", namespace, position,
                        self.where(f"{namespace}/{POINTER}"), kept[0].position)  # fmt: skip
            return True
        return False

    async def _put_pointer(self, namespace: str, pointer: Pointer, etag: str | None) -> bool:
        """Write the pointer if it is still at ``etag`` (absent, if None); False if it is not."""
        key = f"{namespace}/{POINTER}"
        mode: Any = "overwrite"
        if not isinstance(self._store, LocalStore):
            mode = "create" if etag is None else {"e_tag": etag}
        try:
            await _translated(f"write {self.where(key)}",
                              obstore.put_async(self._store, key, pointer.encode(), mode=mode))  # fmt: skip
        except BackendUnavailableError as exc:
            if isinstance(exc.__cause__, PreconditionError | AlreadyExistsError):
                return False
            raise
        return True

    async def _prune(self, namespace: str, pointer: Pointer, below: int) -> None:
        """Delete our snapshots that the pointer no longer names (the old ones, and those of an
        upload killed halfway), if older than the one just published."""
        keep = {s.id for s in pointer.snapshots}
        doomed = []
        async for key in self._keys(f"{namespace}/snapshots/"):
            parts = key.split("/")
            if (len(parts) == 4 and parts[0] == namespace and parts[3] in FILES
                    and (m := _ID.fullmatch(parts[2])) and parts[2] not in keep
                    and int(m.group(1)) < below):  # fmt: skip
                doomed.append(key)
        if doomed:
            await self._call("delete old snapshots", obstore.delete_async(self._store, doomed))
            logger.info("pruned %d object(s) of old snapshots of %s", len(doomed), namespace)

    # ---- the client, its errors translated -------------------------------------------------

    def _base(self, namespace: str, snapshot_id: str) -> str:
        if not _ID.fullmatch(snapshot_id):
            raise CorruptIndexError(self.where(namespace), f"{snapshot_id!r} is not a snapshot id")
        return f"{check_namespace(namespace)}/snapshots/{snapshot_id}"

    async def _keys(self, prefix: str) -> AsyncIterator[str]:
        stream = obstore.list(self._store, prefix=prefix)
        while True:
            try:
                batch = await _translated(f"list {self.where(prefix)}", stream.__anext__())
            except StopAsyncIteration:
                return
            for meta in batch:
                yield meta["path"]

    async def _get_hashed(
        self, key: str, progress: Progress | None = None
    ) -> tuple[Chunks, str] | None:
        """An object's bytes, as the pieces they arrived in, and their sha256; None if it does
        not exist. Each piece is hashed in a worker thread while the client fetches the next
        (hashlib lets go of the GIL): hashing and downloading overlap instead of taking turns."""
        what = f"read {self.where(key)}"
        try:
            result = await _translated(what, obstore.get_async(self._store, key))
        except FileNotFoundError:
            return None
        hasher = hashlib.sha256()
        chunks = Chunks()
        stream = result.stream(min_chunk_size=STREAM_CHUNK)
        hashing: asyncio.Future[None] | None = None
        try:
            while True:
                try:
                    chunk = await _translated(what, stream.__anext__())
                except StopAsyncIteration:
                    break
                if hashing is not None:
                    await hashing  # in order: the previous piece first
                hashing = asyncio.ensure_future(asyncio.to_thread(hasher.update, chunk))
                chunks.append(chunk)
                if progress is not None:
                    progress(len(chunk))
            if hashing is not None:
                await hashing
        finally:
            if hashing is not None and not hashing.done():  # cancelled: let the thread finish
                await asyncio.wait([hashing])
        return chunks, hasher.hexdigest()

    async def _put(self, key: str, data: bytes) -> None:
        await self._call(f"write {self.where(key)}", obstore.put_async(
            self._store, key, data, chunk_size=CHUNK_SIZE, max_concurrency=MAX_CONCURRENCY))  # fmt: skip

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        try:
            return await _translated(what, call)
        except FileNotFoundError as exc:
            raise BackendUnavailableError(BACKEND, f"{what}: not found") from exc


async def _translated(what: str, call: Awaitable[T]) -> T:
    """Await one client call: a missing object stays ``FileNotFoundError`` (the callers decide
    what it means), anything else from the store is a :class:`BackendUnavailableError`."""
    try:
        return await call
    except (FileNotFoundError, StopAsyncIteration):
        raise
    except Exception as exc:
        raise BackendUnavailableError(BACKEND, f"{what}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    """The client's message without its multi-line debug dump (which quotes whole responses)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _open(url: str, endpoint: str | None, connect_timeout: float, retries: int) -> Any:
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigurationError("SATELLITES_FAISS_SNAPSHOT_URL",
                                     "file:// needs an absolute path (file:///mnt/shared)")  # fmt: skip
        return LocalStore(Path(unquote(parts.path)), mkdir=True)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigurationError("SATELLITES_FAISS_SNAPSHOT_URL",
                                 f"must be s3://bucket/prefix or file:///path (got {redact_url(url)!r})")  # fmt: skip
    options: ClientConfig = {"connect_timeout": timedelta(seconds=connect_timeout)}
    config: dict[str, Any] = {}
    if endpoint is not None:
        options["allow_http"] = endpoint.startswith("http://")
        config = {"endpoint": endpoint.rstrip("/"), "virtual_hosted_style_request": False}
    retry: RetryConfig = {"max_retries": retries, "retry_timeout": timedelta(seconds=10 * (retries + 1)),
             "backoff": {"init_backoff": timedelta(milliseconds=200),
                         "max_backoff": timedelta(seconds=2)}}  # fmt: skip
    return S3Store(parts.netloc, prefix=parts.path.strip("/") or None, client_options=options,
                   retry_config=retry, **config)  # fmt: skip


def _let_client_threads_leave() -> None:
    """At interpreter exit, wait until no thread of the client's native runtime is inside
    Python (registered with ``atexit``, whose hooks run before finalisation begins).

    obstore completes a request on a thread of its tokio runtime, which calls into Python
    (``loop.call_soon_threadsafe``) to hand the result to the event loop. The main thread can
    take that result, finish ``asyncio.run`` and reach the exit while the native thread still
    waits to take the GIL back after writing the loop's wake-up byte. On CPython before 3.14 a
    thread that takes the GIL once finalisation has begun is ended with ``pthread_exit``,
    which cannot unwind through Rust frames: the process aborted (SIGABRT, exit 134; CPython
    gh-87135), turning a one-line error with exit 1 into a crash. Sleeping drops the GIL, so
    the waiting thread takes it and leaves; such a thread shows as a Python frame on a
    thread that :mod:`threading` does not know."""
    me = threading.get_ident()
    deadline = time.monotonic() + EXIT_GRACE
    while True:
        time.sleep(0.002)
        known = {t.ident for t in threading.enumerate()} | {me}
        if all(t in known for t in sys._current_frames()) or time.monotonic() > deadline:
            return


atexit.register(_let_client_threads_leave)
