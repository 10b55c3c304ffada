"""A compact text form for vectors inside JSON event payloads.

A 384-dimensional vector as a JSON number array is ~4 KB that Postgres stores as ``numeric``s
and prints back digit by digit, and that Python parses float by float: replaying such a log runs
at a few thousand events/s. As little-endian float32 bytes in base64 it is ~2 KB, stored and
read as one string, and decoded with one ``np.frombuffer``: replay is then bound by the log read,
not by number formatting. ``encode_vector`` produces ``"f32:<base64>"``; :class:`~satellites_es.
projections.faiss_sink.FaissSink` accepts either form, a batch at a time (``decode_matrix``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ..errors import InvalidVectorError

__all__ = ["decode_matrix", "decode_vector", "encode_matrix", "encode_vector"]

PREFIX = "f32:"


def encode_vector(vector: Sequence[float] | npt.NDArray[np.floating]) -> str:
    data = np.ascontiguousarray(vector, dtype="<f4")
    if data.ndim != 1:
        raise InvalidVectorError(f"expected one vector, got shape {data.shape}")
    return PREFIX + base64.b64encode(data.tobytes()).decode("ascii")


def encode_matrix(matrix: npt.NDArray[np.floating]) -> list[str]:
    """Each row of a 2-d matrix as :func:`encode_vector` writes it: the matrix converted once,
    not row by row (a change set encodes a batch of embeddings at a time)."""
    data = np.ascontiguousarray(matrix, dtype="<f4")
    if data.ndim != 2:
        raise InvalidVectorError(f"expected a matrix of vectors, got shape {data.shape}")
    raw, width = memoryview(data.tobytes()), data.shape[1] * 4
    return [PREFIX + binascii.b2a_base64(raw[s : s + width], newline=False).decode("ascii")
            for s in range(0, len(raw), width)]  # fmt: skip


def decode_vector(value: str | Sequence[float]) -> npt.NDArray[np.float32]:
    """The vector of an encoded string, or of a plain list of numbers."""
    if not isinstance(value, str):
        return np.asarray(value, dtype=np.float32)
    if not value.startswith(PREFIX):
        raise InvalidVectorError(f"an encoded vector starts with {PREFIX!r}")
    try:  # binascii directly: b64decode(validate=True) runs a regex over the whole string
        raw = binascii.a2b_base64(value[len(PREFIX) :], strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidVectorError(f"encoded vector is not valid base64: {exc}") from exc
    if len(raw) % 4:
        raise InvalidVectorError("encoded vector length is not a multiple of 4 bytes")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32, copy=False)


# ---- batches ------------------------------------------------------------------------------
#
# decode_matrix: a batch of encoded vectors as one float32 matrix, for the FAISS sink's writes.
# Row i is decode_vector(values[i]), byte for byte, and what that refuses is refused here with
# the same error. Why a batch form: CPython's binascii.a2b_base64 decodes ~250 MB/s, ~8 us for
# one 384-d vector, which made base64 the largest single cost of a FAISS replay after the log
# read. When every value is an "f32:" string of one length (one dimension: the usual batch), the
# whole batch is decoded by numpy at once, two characters at a time through a 65,536-entry table
# (a 384-d vector in ~2.5-4 us here, against ~8-13 us row by row), straight into the matrix that
# VectorIndex.upsert_arrays takes. Anything else (a list of numbers, mixed lengths, a character
# outside the alphabet) goes row by row through decode_vector, which names the problem.

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_PREFIX = np.frombuffer(PREFIX.encode("ascii"), np.uint8)
_PAD, _ZERO = ord("="), ord("A")
_BAD = 0xFFFF  # a pair holding a character outside the alphabet


def _pair_table() -> npt.NDArray[np.uint16]:
    """12 bits for every two characters, indexed by their little-endian uint16 (first character
    in the low byte); ``_BAD`` when either is not a base64 character."""
    sextet = np.full(256, 64, np.uint16)
    sextet[np.frombuffer(_ALPHABET, np.uint8)] = np.arange(64, dtype=np.uint16)
    codes = np.arange(65536, dtype=np.uint32)
    first, second = sextet[codes & 0xFF], sextet[codes >> 8]
    table = (first.astype(np.uint32) << 6) | second
    table[(first == 64) | (second == 64)] = _BAD
    pairs: npt.NDArray[np.uint16] = table.astype(np.uint16)
    return pairs


_PAIRS = _pair_table()


def decode_matrix(values: Sequence[str | Sequence[float]]) -> npt.NDArray[np.float32]:
    """An ``(n, d)`` float32 matrix of ``n`` vectors, each encoded (``"f32:<base64>"``) or a
    list of numbers; :class:`InvalidVectorError` for a bad value or rows of different lengths."""
    if not values:
        return np.empty((0, 0), np.float32)
    fast = _decode_uniform(values)
    if fast is not None:
        return fast
    rows = [decode_vector(value) for value in values]
    if len({row.shape for row in rows}) > 1:
        raise InvalidVectorError(f"vectors of different lengths in one batch: {rows[0].shape}")
    return np.stack(rows).astype(np.float32, copy=False)


def _decode_uniform(values: Sequence[str | Sequence[float]]) -> npt.NDArray[np.float32] | None:
    """The vectorised decode, or None when the batch is not uniform valid ``"f32:"`` strings
    (the row-by-row path then decodes it or says what is wrong)."""
    if set(map(type, values)) != {str} or len(set(map(len, values))) != 1:
        return None
    first = str(values[0])
    width = len(first)
    body = width - len(PREFIX)
    if body <= 0 or body % 4:
        return None
    try:
        text = "".join(values).encode("ascii")  # type: ignore[arg-type]
    except UnicodeEncodeError:
        return None
    chars = np.frombuffer(text, np.uint8).reshape(len(values), width)
    if not (chars[:, : len(PREFIX)] == _PREFIX).all():
        return None
    body_chars = chars[:, len(PREFIX) :].copy()  # contiguous and writable
    pad = len(first) - len(first.rstrip("="))
    if pad:
        if pad > 2 or not (body_chars[:, -pad:] == _PAD).all():
            return None
        body_chars[:, -pad:] = _ZERO  # decoded to bytes that are dropped below
    pairs = np.take(_PAIRS, body_chars.view("<u2"))
    if int(pairs.max()) == _BAD:
        return None
    size = 3 * body // 4 - pad
    if size % 4:
        return None
    quads = pairs.view("<u4")  # two pairs: the first in the low half
    groups = (quads & 0xFFFF) << 12
    groups |= quads >> 16  # 24 bits: three bytes, the first one highest
    out = np.empty((*groups.shape, 3), np.uint8)
    np.right_shift(groups, 16, out=out[..., 0], casting="unsafe")
    np.right_shift(groups, 8, out=out[..., 1], casting="unsafe")
    np.copyto(out[..., 2], groups, casting="unsafe")
    raw = out.reshape(len(values), -1)
    if pad:
        raw = np.ascontiguousarray(raw[:, :size])
    return raw.view("<f4").astype(np.float32, copy=False)
