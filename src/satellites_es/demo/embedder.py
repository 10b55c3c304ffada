"""A deterministic hashing embedder: no model download, same vector for the same text anywhere.

No embedding model small enough to ship inside a PyPI wheel without PyTorch fits this project's
footprint, so the demo embeds with feature hashing (the "hashing trick"): every word and word
bigram is hashed (BLAKE2b) to one of ``dimension`` buckets with a sign, weighted by
``1 + log(count)``, and the vector is L2-normalised. Texts that share words get a high cosine;
it is lexical, not semantic, and the demo's output says so. Swap in a real model by passing any
``Callable[[Sequence[str]], np.ndarray]``.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["HashingEmbedder"]

_WORD = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    name = "hashing-384 (deterministic feature hashing, lexical)"

    def __init__(self, dimension: int = 384) -> None:
        self.dimension = dimension

    def features(self, text: str) -> Counter[str]:
        words = _WORD.findall(text.lower())
        return Counter(words + [f"{a} {b}" for a, b in itertools.pairwise(words)])

    def embed_one(self, text: str) -> npt.NDArray[np.float32]:
        vector = np.zeros(self.dimension, dtype=np.float32)
        for feature, count in self.features(text).items():
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest[:4], "little") % self.dimension
            sign = 1.0 if digest[4] & 1 else -1.0
            vector[bucket] += sign * (1.0 + math.log(count))
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector

    def __call__(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return (
            np.stack([self.embed_one(t) for t in texts])
            if texts
            else np.zeros((0, self.dimension), np.float32)
        )
