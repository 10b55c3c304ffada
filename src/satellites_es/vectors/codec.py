"""A compact text form for vectors inside JSON event payloads.

A 384-dimensional vector as a JSON number array is ~4 KB that Postgres stores as ``numeric``s
and prints back digit by digit, and that Python parses float by float: replaying such a log runs
at a few thousand events/s. As little-endian float32 bytes in base64 it is ~2 KB, stored and
read as one string, and decoded with one ``np.frombuffer``: replay is then bound by the log read,
not by number formatting. ``encode_vector`` produces ``"f32:<base64>"``; :class:`~satellites_es.
projections.faiss_sink.FaissSink` accepts either form.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ..errors import InvalidVectorError

__all__ = ["decode_vector", "encode_vector"]

PREFIX = "f32:"


def encode_vector(vector: Sequence[float] | npt.NDArray[np.floating]) -> str:
    data = np.ascontiguousarray(vector, dtype="<f4")
    if data.ndim != 1:
        raise InvalidVectorError(f"expected one vector, got shape {data.shape}")
    return PREFIX + base64.b64encode(data.tobytes()).decode("ascii")


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
