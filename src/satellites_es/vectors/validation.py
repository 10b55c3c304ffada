"""Checks run on the event loop before any FAISS call, so bad input never writes anything.

Every check raises a typed error from :mod:`satellites_es.errors`: the batch is refused as a
whole, before the namespace is touched.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from ..errors import InvalidNamespaceError, InvalidVectorError

_json_encode = msgspec.json.encode
_json_decode = msgspec.json.decode

__all__ = [
    "check_id",
    "check_ids",
    "check_metadata",
    "check_namespace",
    "check_query",
    "check_vectors",
]

# An allowlist, never a denylist: a namespace becomes a directory name (qdrant GHSA-jwrp-6pff-wg9c).
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_MAX_ID_LENGTH = 1024

Float32Array = npt.NDArray[np.float32]


def check_namespace(name: object) -> str:
    """Return ``name`` if it is a safe identifier, else raise InvalidNamespaceError."""
    if not isinstance(name, str) or not _NAMESPACE.fullmatch(name) or name in {".", ".."}:
        raise InvalidNamespaceError(
            f"namespace {name!r:.80} is not a safe identifier "
            "(letters, digits, '_', '.', '-'; starts with a letter or digit; at most 128 chars)"
        )
    return name


def check_id(vector_id: object) -> str:
    if not isinstance(vector_id, str) or not vector_id or len(vector_id) > _MAX_ID_LENGTH:
        raise InvalidVectorError(
            f"vector id must be a non-empty str of at most {_MAX_ID_LENGTH} chars, "
            f"got {vector_id!r:.80}"
        )
    return vector_id


def check_ids(ids: Sequence[object]) -> list[str]:
    """``check_id`` for a batch; the common all-good case runs at C speed (map, set, min, max)."""
    if ids and set(map(type, ids)) == {str}:
        lengths = list(map(len, ids))  # type: ignore[arg-type]
        if min(lengths) > 0 and max(lengths) <= _MAX_ID_LENGTH:
            return list(ids)  # type: ignore[arg-type]
    return [check_id(vector_id) for vector_id in ids]


def check_vectors(
    vectors: Sequence[Sequence[float]] | npt.ArrayLike,
    dimension: int,
    *,
    normalise: bool,
    copy: bool = True,
) -> Float32Array:
    """Return a C-contiguous float32 ``(n, dimension)`` copy, unit length when ``normalise``.

    With ``copy=False`` a C-contiguous float32 ndarray that needs no normalising is returned
    as it is (the caller's own buffer); the caller's array is never modified either way.
    """
    try:
        # a list is copied by the conversion anyway; an ndarray only when asked to
        array = np.array(
            vectors,
            dtype=np.float32,
            copy=True if copy and isinstance(vectors, np.ndarray) else None,
        )
    except (TypeError, ValueError) as exc:
        raise InvalidVectorError(f"vectors are not numeric arrays: {exc}") from exc
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2 or array.shape[1] != dimension:
        raise InvalidVectorError(
            f"expected vectors of dimension {dimension}, got shape {array.shape}"
        )
    if not _all_finite(array):
        raise InvalidVectorError("vectors must not contain NaN or infinity")
    if normalise:
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        if (norms == 0).any() or not np.isfinite(norms).all():
            raise InvalidVectorError("a zero vector (or one too large) has no cosine direction")
        if array is vectors or array.base is not None:  # the caller's buffer: out of place
            array = array / norms
        else:
            array /= norms
    return np.ascontiguousarray(array)


def check_query(vector: Any, dimension: int, *, normalise: bool) -> Float32Array:
    """``check_vectors`` for the usual single query, a float32 vector of the right length, at a
    fraction of its cost, which weighs on a fast HNSW query (BENCHMARKS.md has the figures). Its
    squared norm is one dot product: finite only if every element is (an overflow to
    infinity falls back to the full check), and its root is the norm under ``cosine``. Anything
    else takes the full check. The result is a fresh ``(1, dimension)`` array: a queued query
    must not see the caller change its buffer."""
    if (
        isinstance(vector, np.ndarray)
        and vector.dtype == np.float32
        and vector.shape == (dimension,)
    ):
        square = float(np.dot(vector, vector))
        if math.isfinite(square) and (square > 0 or not normalise):
            row: Float32Array = vector.reshape(1, dimension)
            return row / np.float32(math.sqrt(square)) if normalise else row.copy()
    return check_vectors(vector, dimension, normalise=normalise)


def _all_finite(array: Float32Array) -> bool:
    """A NaN or infinity makes the sum non-finite, so a finite sum proves there is none. The sum
    is numpy's own SIMD loop (``einsum``, ~3x faster than ``np.add.reduce`` here); not BLAS,
    whose threads spin after a call and took a core from the FAISS add that follows. Only when
    the sum is not finite (or overflowed) do we pay for the element-wise check."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.einsum("ij->", array)):
            return True
    return bool(np.isfinite(array).all())


def check_metadata(
    items: Sequence[Mapping[str, Any] | None],
) -> list[dict[str, Any] | None]:
    """Deep-copy metadata through JSON: proves it is JSON (no NaN) and detaches it from the caller.

    The rule is ``json.loads(json.dumps(items, allow_nan=False))`` with string keys only. The
    usual batch is checked by msgspec's encoder and decoder and a comparison with the input, all
    at C speed (~0.25 us an item against ~1.5): when the copy equals the input, every value was
    already what JSON gives back. msgspec is more lenient than the rule (NaN becomes ``null``, a
    datetime a string, an int key a string key), but each of those makes the copy differ from the
    input; then the rule itself runs, and refuses or accepts as it always did (a tuple becomes a
    list). Only on failure is the offending item looked for, to name it.
    """
    if items.count(None) == len(items):  # no metadata at all: nothing to copy
        return [None] * len(items)
    if not all(type(item) is dict or item is None for item in items):
        return _checked_copy(items)  # another Mapping, or not a mapping at all
    try:
        copied: list[dict[str, Any] | None] = _json_decode(_json_encode(items))
        if copied == items:
            return copied
    except (TypeError, ValueError, OverflowError, msgspec.MsgspecError):
        pass
    return _checked_copy(items)


def _checked_copy(items: Sequence[Mapping[str, Any] | None]) -> list[dict[str, Any] | None]:
    for position, item in enumerate(items):
        if item is not None and not isinstance(item, Mapping):
            raise InvalidVectorError(f"metadata #{position} must be a mapping or None")
    try:
        text = json.dumps([None if m is None else dict(m) for m in items], allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidVectorError(
            f"metadata #{_first_bad(items)} is not JSON-serialisable: {exc}"
        ) from exc
    for position, item in enumerate(items):
        # json.dumps turns {1: "a"} into {"1": "a"}: refuse rather than change the keys
        if item is not None and not all(isinstance(key, str) for key in item):
            raise InvalidVectorError(f"metadata #{position} has keys that are not strings")
    copied: list[dict[str, Any] | None] = json.loads(text)
    return copied


def _first_bad(items: Sequence[Mapping[str, Any] | None]) -> int:
    for position, item in enumerate(items):
        try:
            json.dumps(None if item is None else dict(item), allow_nan=False)
        except (TypeError, ValueError):
            return position
    return -1
