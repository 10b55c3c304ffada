from __future__ import annotations

import numpy as np
import pytest

from satellites_es.errors import InvalidVectorError
from satellites_es.vectors.codec import decode_vector, encode_vector


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
