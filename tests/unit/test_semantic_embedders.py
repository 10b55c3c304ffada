"""Embedders: the hashing fallback, WordLlama's bundled model loading without any download,
and the check that refuses a broken model's output before it reaches the log."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

import numpy as np
import pytest

from satellites_es.errors import InvalidVectorError
from satellites_es.semantic import Embedder, HashingEmbedder, WordLlamaEmbedder
from satellites_es.semantic.embedders import Matrix, embed_checked


async def test_the_hashing_embedder_is_deterministic_and_unit_length() -> None:
    model = HashingEmbedder(32)
    assert isinstance(model, Embedder) and model.name == "hashing-32"
    a = await model.embed(["vector search", "message queues"] * 10)
    assert a.shape == (20, 32) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(
        a, await HashingEmbedder(32).embed(["vector search", "message queues"] * 10)
    )


async def test_wordllama_embeds_with_its_bundled_model() -> None:
    model = WordLlamaEmbedder()
    assert isinstance(model, Embedder) and model.dimension == 256
    texts = ["rabbitmq consumers", "rabbitmq consumer", "redis cache eviction"]
    out = await embed_checked(model, texts * 4)  # over the inline limit: in a thread
    assert out.shape == (12, 256)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert float(out[0] @ out[1]) > float(out[0] @ out[2])  # a plural is closer than a topic


def test_wordllama_loads_with_no_network() -> None:
    """In a fresh process whose every HTTP(S) connection fails: loading must read the wheel's
    own files, not Hugging Face (wordllama 0.4.0's ``WordLlama.load()`` does try it)."""
    code = ("from satellites_es.semantic import WordLlamaEmbedder; "
            "print(WordLlamaEmbedder().embed_now(['hello']).shape)")  # fmt: skip
    env = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "HF_HUB_OFFLINE": "1", "HOME": "/nonexistent"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 256)"


class Broken:
    """A model that returns what it should not: the check must refuse it."""

    name, dimension = "broken", 4

    def __init__(self, out: Matrix) -> None:
        self.out = out

    async def embed(self, texts: Sequence[str]) -> Matrix:
        return self.out


@pytest.mark.parametrize(
    ("out", "message"),
    [
        (np.zeros((1, 4), np.float32), "shape"),
        (np.zeros((2, 3), np.float32), "shape"),
        (np.array([[np.nan, 0, 0, 0], [1, 0, 0, 0]], np.float32), "NaN"),
    ],
)
async def test_a_broken_models_output_is_refused(out: Matrix, message: str) -> None:
    with pytest.raises(InvalidVectorError, match=message):
        await embed_checked(Broken(out), ["a", "b"])
