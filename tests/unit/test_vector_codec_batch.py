"""decode_matrix: row i is decode_vector(values[i]) byte for byte, on the vectorised path and on
the row-by-row one, and what decode_vector refuses it refuses with the same error type."""

from __future__ import annotations

import numpy as np
import pytest

from satellites_es.errors import InvalidVectorError
from satellites_es.vectors.codec import decode_matrix, decode_vector, encode_vector


def _encoded(rows: int, dim: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((rows, dim)).astype(np.float32)
    return [encode_vector(row) for row in matrix], matrix


@pytest.mark.parametrize("dim", [1, 2, 3, 4, 5, 6, 7, 8, 31, 128, 384, 1024])
def test_every_dimension_and_padding_decodes_like_decode_vector(dim: int) -> None:
    # 4 * dim bytes: no '=' when dim % 3 == 0, else one or two ('==' for dim=1, '=' for dim=2)
    values, matrix = _encoded(7, dim, seed=dim)
    got = decode_matrix(values)
    assert got.dtype == np.float32 and got.shape == (7, dim) and got.flags.c_contiguous
    assert got.tobytes() == matrix.tobytes()
    assert got.tobytes() == np.stack([decode_vector(v) for v in values]).tobytes()


def test_every_bit_pattern_survives() -> None:
    # all 2**16 two-byte patterns in both halves of the floats, NaN payloads and -0.0 included
    raw = np.arange(2**16, dtype="<u2").repeat(2).view("<f4").reshape(-1, 256)
    values = [encode_vector(row) for row in raw]
    assert decode_matrix(values).tobytes() == raw.tobytes()


def test_lists_and_a_mix_of_forms() -> None:
    values, matrix = _encoded(3, 6)
    mixed: list[str | list[float]] = [values[0], matrix[1].tolist(), values[2]]
    assert decode_matrix(mixed).tobytes() == matrix.tobytes()
    assert decode_matrix([[1.0, 2.0], [3.0, 4.0]]).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert decode_matrix([]).shape == (0, 0)
    assert decode_matrix(["f32:", "f32:"]).shape == (2, 0)  # as decode_vector: empty vectors


def _with(values: list[str], row: int, text: str) -> list[str]:
    return [*values[:row], text, *values[row + 1 :]]


@pytest.mark.parametrize(
    "bad",
    ["bad-char", "no-prefix", "inner-padding", "non-ascii", "odd-bytes", "lengths"],
)
def test_bad_values_raise_invalid_vector(bad: str) -> None:
    values, _ = _encoded(5, 6)
    body = values[3][4:]
    broken = {
        "bad-char": _with(values, 3, "f32:" + "!" + body[1:]),
        "no-prefix": _with(values, 3, "f64:" + body),
        "inner-padding": _with(values, 3, "f32:" + body[:4] + "=" + body[5:]),
        "non-ascii": _with(values, 3, "f32:" + "é" + body[1:]),
        "odd-bytes": ["f32:AAAA", "f32:AAAA"],  # 3 bytes: not whole float32s
        "lengths": _with(values, 3, encode_vector([1.0, 2.0, 3.0])),
    }[bad]
    with pytest.raises(InvalidVectorError):
        decode_matrix(broken)
