from __future__ import annotations

import numpy as np
import pytest

from satellites_es.errors import InvalidVectorError
from satellites_es.vectors.codec import decode_vector, encode_matrix, encode_vector


def test_round_trip_is_exact_float32() -> None:
    v = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    text = encode_vector(v)
    assert text.startswith("f32:") and len(text) < 384 * 4 * 4 // 3 + 16
    assert np.array_equal(decode_vector(text), v)
    assert np.array_equal(decode_vector([1.0, 2.5]), np.array([1.0, 2.5], dtype=np.float32))


@pytest.mark.parametrize("bad", ["nope", "f32:***", "f32:AAA="])
def test_bad_encodings_are_refused(bad: str) -> None:
    with pytest.raises(InvalidVectorError):
        decode_vector(bad)


def test_only_one_vector_is_encoded() -> None:
    with pytest.raises(InvalidVectorError):
        encode_vector(np.zeros((2, 3)))


def test_a_matrix_encodes_row_by_row_as_encode_vector_does() -> None:
    """``encode_matrix`` (a change set's batch of embeddings) writes each row exactly as
    ``encode_vector`` would, whatever the input's dtype or layout, and refuses a non-matrix."""
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((7, 5))  # float64, converted once
    for given in (matrix, matrix.astype(np.float32), np.asfortranarray(matrix)):
        assert encode_matrix(given) == [encode_vector(row) for row in matrix]
    assert encode_matrix(np.zeros((0, 5), dtype=np.float32)) == []
    with pytest.raises(InvalidVectorError):
        encode_matrix(matrix[0])
