"""Snapshots of a namespace on disk: atomic to write, verified to read.

Layout under ``FaissConfig.index_path``::

    <namespace>/
        CURRENT                    "snapshot-000000007 <sha256 of its MANIFEST.json>"
        snapshot-000000007/
            index.faiss            faiss.serialize_index bytes
            meta.json              ids, labels, metadata, per-id positions (JSON, never pickle)
            MANIFEST.json          format, spec, count, applied position, sha256 + size of both

Writing (:func:`write_snapshot`). ``faiss.write_index`` truncates and streams into its target,
so a crash mid-write leaves a torn file (LightRAG #3134), and an index and a sidecar written
separately drift apart (mem0 #7262). So a save never touches the snapshot in use:

1. write the three files into a fresh ``.tmp-*`` directory, ``fsync`` each file, then the directory;
2. rename it to ``snapshot-<n+1>`` and ``fsync`` the namespace directory;
3. write ``CURRENT.tmp``, ``fsync`` it, ``os.replace`` it over ``CURRENT`` (atomic on POSIX) and
   ``fsync`` the namespace directory again; this rename is the commit point;
4. only then remove older snapshots and stray ``.tmp-*`` directories.

A SIGKILL before step 3 leaves ``CURRENT`` naming the previous, complete snapshot (the new files
are garbage, pruned by the next save); after it, ``CURRENT`` names the new one, already durable.

Reading (:func:`read_snapshot`) trusts nothing: ``CURRENT`` must be well formed, the manifest
must hash to what ``CURRENT`` says, each file must have the size and sha256 the manifest lists,
the index must deserialise to the manifest's dimension, metric and size, and the metadata must
agree with the index label for label. Any failure raises
:class:`~satellites_es.errors.CorruptIndexError` naming the file; a damaged snapshot is never
served as an empty or different index.

The bytes of a snapshot (:func:`encode_snapshot`) and their verification (:func:`decode_snapshot`)
do not depend on where the files lie: the object store (:mod:`.snapshot_store`) uploads the same
three files and checks a download with the same code, naming the object instead of the path.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from ..errors import CorruptIndexError, InvalidNamespaceError, NamespaceNotFoundError
from ._faiss import faiss
from .models import NamespaceSpec
from .namespace import NamespaceState, Stored, frozen
from .validation import check_namespace

__all__ = [
    "CURRENT",
    "FILES",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "MANIFEST_FILE",
    "META_FILE",
    "Chunks",
    "Manifest",
    "Snapshot",
    "assemble",
    "decode_index",
    "decode_snapshot",
    "decode_state",
    "encode_snapshot",
    "install_snapshot",
    "is_safe_name",
    "manifest_sha256",
    "open_manifest",
    "read_snapshot",
    "remove_namespace_dir",
    "snapshot_namespaces",
    "write_snapshot",
]

FORMAT_VERSION = 1
CURRENT = "CURRENT"
INDEX_FILE = "index.faiss"
META_FILE = "meta.json"
MANIFEST_FILE = "MANIFEST.json"
#: The files of a snapshot, the manifest last: a reader that finds the manifest finds the rest.
FILES = (INDEX_FILE, META_FILE, MANIFEST_FILE)
_READ_CHUNK = 16 * 1024 * 1024
_SNAPSHOT = re.compile(r"snapshot-(\d{9})")
_CURRENT_LINE = re.compile(r"(snapshot-\d{9}) ([0-9a-f]{64})\n?")


# ---- writing ------------------------------------------------------------------------------


def encode_snapshot(
    spec: NamespaceSpec, index_bytes: bytes, state: NamespaceState
) -> dict[str, bytes]:
    """The three files of a snapshot (see :data:`FILES`), the manifest hashing the other two."""
    meta_bytes = _dump(_state_json(state))
    manifest_bytes = _dump(_manifest(spec, state, index_bytes, meta_bytes))
    return {INDEX_FILE: index_bytes, META_FILE: meta_bytes, MANIFEST_FILE: manifest_bytes}


def manifest_sha256(files: Mapping[str, bytes]) -> str:
    """The hash a pointer (``CURRENT``, the object store's ``POINTER``) names a snapshot by."""
    return _sha256(files[MANIFEST_FILE])


def write_snapshot(
    ns_dir: Path, spec: NamespaceSpec, index_bytes: bytes, state: NamespaceState
) -> Path:
    """Write a complete snapshot beside the current one and make it current; returns its dir."""
    return install_snapshot(ns_dir, encode_snapshot(spec, index_bytes, state))


def install_snapshot(ns_dir: Path, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` (see :func:`encode_snapshot`) as the namespace's new current snapshot,
    in the steps of the module docstring; returns its dir."""
    _ensure_dir(ns_dir)
    number = _next_number(ns_dir)
    tmp = ns_dir / f".tmp-{number:09d}-{uuid.uuid4().hex}"
    tmp.mkdir()
    for file in FILES:
        _write_durable(tmp / file, files[file])
    _fsync_dir(tmp)
    final = ns_dir / f"snapshot-{number:09d}"
    os.rename(tmp, final)
    _fsync_dir(ns_dir)
    pointer = f"{final.name} {manifest_sha256(files)}\n".encode()
    _write_durable(ns_dir / f"{CURRENT}.tmp", pointer)
    os.replace(ns_dir / f"{CURRENT}.tmp", ns_dir / CURRENT)  # the commit point
    _fsync_dir(ns_dir)
    _prune(ns_dir, keep=final.name)
    return final


def remove_namespace_dir(root: Path, name: str) -> None:
    """Remove a namespace's directory; renamed aside first so a crash never leaves half of it."""
    ns_dir = root / name
    if not ns_dir.exists():
        return
    grave = root / f".dropped-{name}-{uuid.uuid4().hex}"
    os.rename(ns_dir, grave)
    _fsync_dir(root)
    shutil.rmtree(grave, ignore_errors=True)


def snapshot_namespaces(root: Path) -> list[str]:
    """Names of the namespaces that have a committed snapshot under ``root``."""
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if is_safe_name(p.name) and (p / CURRENT).is_file()
    )


def is_safe_name(name: str) -> bool:
    """Directories that could not have been created by us (``.tmp-*``, odd names) are skipped."""
    try:
        check_namespace(name)
    except InvalidNamespaceError:
        return False
    return True


def _manifest(
    spec: NamespaceSpec, state: NamespaceState, index_bytes: bytes, meta_bytes: bytes
) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "spec": spec.to_json(),
        "count": len(state.entries),
        "tombstones": len(state.tombstones),
        "trained": state.trained,
        "applied_position": state.applied_position,
        "files": {
            INDEX_FILE: {"sha256": _sha256(index_bytes), "size": len(index_bytes)},
            META_FILE: {"sha256": _sha256(meta_bytes), "size": len(meta_bytes)},
        },
    }


def _state_json(state: NamespaceState) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "entries": [[label, vid, _plain(meta)] for label, (vid, meta) in state.entries.items()],
        "positions": state.positions,
        "tombstones": sorted(state.tombstones),
        "next_label": state.next_label,
        "applied_position": state.applied_position,
        "trained": state.trained,
    }


def _next_number(ns_dir: Path) -> int:
    numbers = [0]
    for path in ns_dir.iterdir():
        match = _SNAPSHOT.fullmatch(path.name) or re.match(r"\.tmp-(\d{9})-", path.name)
        if match:
            numbers.append(int(match.group(1)))
    return max(numbers) + 1


def _prune(ns_dir: Path, keep: str) -> None:
    for path in ns_dir.iterdir():
        if path.name != keep and (_SNAPSHOT.fullmatch(path.name) or path.name.startswith(".tmp-")):
            shutil.rmtree(path, ignore_errors=True)


def _ensure_dir(path: Path) -> None:
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True)
    _fsync_dir(path.parent)


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain(meta: Stored) -> dict[str, Any] | None:
    """A namespace's read-only metadata view as the dict ``json`` writes."""
    return None if meta is None else dict(meta)


def _dump(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- reading ------------------------------------------------------------------------------


class Chunks:
    """A file as the pieces it arrived in (an object store's stream), never joined into one
    buffer unless a parser needs one: joining a 300 MB index copied it once more, on the
    event loop, before FAISS copied it again into its own arrays."""

    def __init__(self, parts: Sequence[Any] = ()) -> None:
        self.parts: list[memoryview] = [memoryview(p).cast("B") for p in parts]
        self._size = sum(p.nbytes for p in self.parts)

    def append(self, part: Any) -> None:
        view = memoryview(part).cast("B")
        self.parts.append(view)
        self._size += view.nbytes

    def __len__(self) -> int:
        return self._size

    def join(self) -> bytes:
        return self.parts[0].tobytes() if len(self.parts) == 1 else b"".join(self.parts)

    def reader(self) -> Callable[[int], bytes]:
        """``read(n)``: the next at most ``n`` bytes (fewer at a piece's end), b"" at the end,
        as ``faiss.PyCallbackIOReader`` asks them."""
        parts, at = iter(self.parts), 0
        part: memoryview | None = next(parts, None)

        def read(n: int) -> bytes:
            nonlocal part, at
            while part is not None and at >= part.nbytes:
                part, at = next(parts, None), 0
            if part is None:
                return b""
            out = part[at : at + n].tobytes()
            at += len(out)
            return out

        return read


def _chunks(data: bytes | Chunks) -> Chunks:
    return data if isinstance(data, Chunks) else Chunks([data])


@dataclass(frozen=True)
class Snapshot:
    """A verified snapshot, ready to serve."""

    spec: NamespaceSpec
    index: Any
    state: NamespaceState


def read_snapshot(ns_dir: Path, name: str) -> tuple[NamespaceSpec, Any, NamespaceState]:
    """Load and verify the current snapshot of ``ns_dir``: spec, FAISS index and state."""
    snap_dir, manifest_sha = _read_current(ns_dir)
    files = {file: _read(snap_dir / file) for file in FILES}
    got = decode_snapshot(name, files, manifest_sha, lambda file: str(snap_dir / file))
    return got.spec, got.index, got.state


def decode_snapshot(
    name: str,
    files: Mapping[str, bytes],
    manifest_sha: str,
    where: Callable[[str], str],
    digests: Mapping[str, str] | None = None,
) -> Snapshot:
    """Verify the files of a snapshot of namespace ``name`` and load them: the manifest must hash
    to ``manifest_sha``, each file must have its manifest's size and sha256, the index and the
    metadata must agree. Raises :class:`CorruptIndexError` naming ``where(file)``. ``digests``:
    the sha256 of files already hashed as they arrived (a download), not hashed again.

    The same steps one at a time (:func:`open_manifest`, :func:`decode_state`,
    :func:`decode_index`, :func:`assemble`) let a download verify and parse one file while the
    next is still arriving."""
    digests = digests or {}
    manifest = open_manifest(name, files[MANIFEST_FILE], manifest_sha, where,
                             digests.get(MANIFEST_FILE))  # fmt: skip
    index = decode_index(manifest, files[INDEX_FILE], where, digests.get(INDEX_FILE))
    state = decode_state(manifest, files[META_FILE], where, digests.get(META_FILE))
    return assemble(manifest, index, state, where)


@dataclass(frozen=True)
class Manifest:
    """A snapshot's manifest, verified against its pointer."""

    spec: NamespaceSpec
    body: dict[str, Any]


def open_manifest(
    name: str, data: bytes, expected_sha: str, where: Callable[[str], str], sha: str | None = None
) -> Manifest:
    """The manifest of a snapshot of ``name``, if it hashes to ``expected_sha`` (its pointer's)."""
    if (sha or _sha256(data)) != expected_sha:
        raise CorruptIndexError(where(MANIFEST_FILE), "checksum does not match its pointer")
    body = _parse_manifest(where(MANIFEST_FILE), data, name)
    return Manifest(NamespaceSpec.from_json(body["spec"]), body)


def decode_index(
    manifest: Manifest, data: bytes | Chunks, where: Callable[[str], str], sha: str | None = None
) -> Any:
    """The FAISS index, once its size and sha256 are the manifest's."""
    chunks = _chunks(data)
    _check_file(where(INDEX_FILE), chunks, manifest.body["files"][INDEX_FILE], sha)
    return _load_index(where(INDEX_FILE), chunks, manifest.spec, manifest.body)


def decode_state(
    manifest: Manifest, data: bytes | Chunks, where: Callable[[str], str], sha: str | None = None
) -> NamespaceState:
    """The ids, metadata and positions, once their size and sha256 are the manifest's."""
    chunks = _chunks(data)
    _check_file(where(META_FILE), chunks, manifest.body["files"][META_FILE], sha)
    with _gc_paused():
        return _parse_state(where(META_FILE), chunks.join(), manifest.body)


def assemble(
    manifest: Manifest, index: Any, state: NamespaceState, where: Callable[[str], str]
) -> Snapshot:
    """The snapshot, once the index and the metadata agree label for label."""
    _check_labels(where(META_FILE), index, state)
    return Snapshot(manifest.spec, index, state)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic GC off while the metadata is parsed: a few objects per entry, none in a cycle,
    and with it on, the survivors are scanned again at every collection of the older
    generations, which dominated the parse in a process holding a large heap (BENCHMARKS.md,
    issue 20). Left off only if it was off already."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_current(ns_dir: Path) -> tuple[Path, str]:
    path = ns_dir / CURRENT
    if not path.is_file():
        raise NamespaceNotFoundError(f"namespace {ns_dir.name!r} has no snapshot")
    match = _CURRENT_LINE.fullmatch(_read(path).decode("ascii", "replace"))
    if not match:
        raise CorruptIndexError(str(path), "not a 'snapshot-<n> <sha256>' line")
    return ns_dir / match.group(1), match.group(2)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CorruptIndexError(str(path), f"cannot be read: {exc.strerror}") from exc


def _check_file(where: str, data: Chunks, expected: Mapping[str, Any], sha256: str | None) -> None:
    """Size, then sha256 (``sha256``: computed as the file arrived; else hashed here)."""
    if len(data) != expected["size"]:
        raise CorruptIndexError(where, f"{len(data)} bytes, manifest says {expected['size']}")
    if sha256 is None:
        hasher = hashlib.sha256()
        for part in data.parts:
            hasher.update(part)
        sha256 = hasher.hexdigest()
    if sha256 != expected["sha256"]:
        raise CorruptIndexError(where, "sha256 does not match the manifest")


def _parse_manifest(path: str, data: bytes, name: str) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
        if manifest["format"] != FORMAT_VERSION:
            raise CorruptIndexError(path, f"unknown format {manifest['format']!r}")
        spec = NamespaceSpec.from_json(manifest["spec"])
        for file in (INDEX_FILE, META_FILE):
            entry = manifest["files"][file]
            if not isinstance(entry["size"], int) or not isinstance(entry["sha256"], str):
                raise TypeError(f"files.{file} needs an int size and a str sha256")
    except CorruptIndexError:
        raise
    except Exception as exc:  # JSON, missing keys, wrong types, bad spec: all mean corrupt
        raise CorruptIndexError(path, f"invalid manifest: {exc!r}") from exc
    if spec.name != name:
        raise CorruptIndexError(path, f"belongs to namespace {spec.name!r}, not {name!r}")
    return dict(manifest)


def _load_index(path: str, data: Chunks, spec: NamespaceSpec, manifest: dict[str, Any]) -> Any:
    try:
        # read through a callback rather than deserialize_index(np.frombuffer(...)): its SWIG
        # conversion copies the whole buffer element by element first (BENCHMARKS.md, issue 20)
        reader = faiss.PyCallbackIOReader(data.reader(), _READ_CHUNK)
        index = faiss.read_index(reader)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise CorruptIndexError(path, f"faiss cannot read it: {exc}") from exc
    expected_metric = faiss.METRIC_L2 if spec.metric == "l2" else faiss.METRIC_INNER_PRODUCT
    expected_total = manifest["count"] + manifest["tombstones"]
    if index.d != spec.dimension or index.metric_type != expected_metric:
        raise CorruptIndexError(path, "dimension or metric differs from the manifest")
    if index.ntotal != expected_total:
        raise CorruptIndexError(path, f"{index.ntotal} vectors, expected {expected_total}")
    return index


class _StateJSON(msgspec.Struct, forbid_unknown_fields=True):
    """``meta.json`` as :func:`_state_json` writes it; msgspec checks every type while it
    parses, at C speed, instead of ``json.loads`` and converting each field in Python."""

    format: int
    entries: list[tuple[int, str, dict[str, Any] | None]]
    positions: dict[str, int]
    tombstones: list[int]
    next_label: int
    applied_position: int | None
    trained: bool


_STATE = msgspec.json.Decoder(_StateJSON)


def _parse_state(path: str, data: bytes, manifest: dict[str, Any]) -> NamespaceState:
    try:
        raw = _STATE.decode(data)
        metas = frozen([meta for _, _, meta in raw.entries])
        entries = {
            label: (vid, meta) for (label, vid, _), meta in zip(raw.entries, metas, strict=True)
        }
        # the namespace's id -> label map, built here (a worker, while the index may still be
        # arriving) rather than when it is served; it also tells a repeated id
        label_of = {vid: label for label, (vid, _) in entries.items()}
        state = NamespaceState(
            entries=entries,
            positions=raw.positions,
            tombstones=set(raw.tombstones),
            next_label=raw.next_label,
            applied_position=raw.applied_position,
            trained=raw.trained,
            label_of=label_of,
        )
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptIndexError(path, f"invalid metadata: {exc}") from exc
    if len(entries) != manifest["count"] or len(label_of) != len(entries):
        raise CorruptIndexError(path, "entries do not match the manifest's count")
    if state.applied_position != manifest["applied_position"]:
        raise CorruptIndexError(path, "applied position differs from the manifest")
    return state


def _check_labels(path: str, index: Any, state: NamespaceState) -> None:
    """Every label the index holds must be a live entry or a tombstone, and vice versa."""
    expected = set(state.entries) | state.tombstones
    if expected and max(expected) >= state.next_label:
        raise CorruptIndexError(path, "a label is above next_label")
    if hasattr(index, "id_map"):
        held = set(faiss.vector_to_array(index.id_map).tolist())
        if held != expected:
            raise CorruptIndexError(path, "labels differ from those in the index")
