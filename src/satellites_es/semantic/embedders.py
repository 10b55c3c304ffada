"""Embedders: a text model behind one small protocol, called a batch at a time.

An :class:`Embedder` has a ``name`` (stable: it is stored with every vector it made, and a
vector projection version is built by exactly one embedder), a ``dimension`` and an async
``embed(texts)`` returning a ``(len(texts), dimension)`` float32 matrix. Embeddings are computed
at write time, in batches, and stored with the event (:mod:`.changeset`), so a replay never calls
a model; only a re-embed (:mod:`.reembed`) does, with the new model.

Two ship with the package:

* :class:`HashingEmbedder`: the demo's feature-hashing embedder (no dependency, lexical, not
  semantic): the fallback that always works;
* :class:`WordLlamaEmbedder`: the ``wordllama`` package's bundled 256-d model (the ``wordllama``
  extra). Its weights and tokenizer are files inside the wheel, loaded from there with downloads
  disabled: ``WordLlama.load()`` of wordllama 0.4.0 looks for the tokenizer under ``tokenizer/``
  while the wheel ships it under ``tokenizers/`` and then tries Hugging Face, which a machine
  without network refuses; building the inference object from the two bundled files does not.

An embedder may also set ``lexical = True``: its vectors are made of the text's words as they
are spelt (feature hashing), so it fails on the same queries as BM25 and hybrid search does not
weigh its leg against the text leg by confidence (:mod:`.hybrid`).

Both are CPU-bound: a batch is embedded in a worker thread so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from ..demo.embedder import HashingEmbedder as _Hashing
from ..errors import ConfigurationError, InvalidVectorError

__all__ = ["Embedder", "HashingEmbedder", "WordLlamaEmbedder", "default_embedder", "embed_checked"]

Matrix = npt.NDArray[np.float32]

#: Below this many texts a batch is embedded on the event loop: the thread hop costs more.
_INLINE = 8


@runtime_checkable
class Embedder(Protocol):
    """A text embedding model: ``embed`` returns one row per text, ``dimension`` wide."""

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> Matrix: ...


class HashingEmbedder:
    """Feature hashing (:mod:`satellites_es.demo.embedder`): deterministic everywhere, no model."""

    lexical = True

    def __init__(self, dimension: int = 384) -> None:
        self._model = _Hashing(dimension)
        self.dimension = dimension
        self.name = f"hashing-{dimension}"

    async def embed(self, texts: Sequence[str]) -> Matrix:
        if len(texts) <= _INLINE:
            return self._model(texts)
        return await asyncio.to_thread(self._model, texts)


class WordLlamaEmbedder:
    """WordLlama's bundled ``l2_supercat`` model, 256 dimensions, unit-length rows."""

    dimension = 256
    name = "wordllama-l2supercat-256"

    def __init__(self, batch_size: int = 256) -> None:
        self.batch_size = batch_size
        self._model = _load_wordllama()

    def embed_now(self, texts: Sequence[str]) -> Matrix:
        """The batch embedded on the calling thread."""
        if not texts:
            return np.zeros((0, self.dimension), np.float32)
        out = self._model.embed(list(texts), norm=True, batch_size=self.batch_size)
        return np.ascontiguousarray(out, dtype=np.float32)

    async def embed(self, texts: Sequence[str]) -> Matrix:
        if len(texts) <= _INLINE:
            return self.embed_now(texts)
        return await asyncio.to_thread(self.embed_now, texts)


def _load_wordllama() -> Any:
    """The inference object from the wheel's own files (see the module docstring)."""
    try:
        import wordllama
        from safetensors import safe_open
        from wordllama import WordLlama
        from wordllama.inference import WordLlamaInference
    except ImportError as exc:
        raise ConfigurationError(
            "WordLlamaEmbedder",
            "needs the wordllama package: pip install 'satellites-es[wordllama]'",
        ) from exc
    root = Path(wordllama.__file__).parent
    tokenizer_file = root / "tokenizers" / "l2_supercat_tokenizer_config.json"
    weights_file = root / "weights" / "l2_supercat_256.safetensors"
    for path in (tokenizer_file, weights_file):
        if not path.is_file():
            raise ConfigurationError("WordLlamaEmbedder", f"the wheel has no {path.name}")
    tokenizer = WordLlama.load_tokenizer(tokenizer_file)
    with safe_open(str(weights_file), framework="np", device="cpu") as f:
        weights = f.get_tensor("embedding.weight")
    return WordLlamaInference(weights, tokenizer, binary=False)


def default_embedder() -> Embedder:
    """WordLlama when the extra is installed, else the hashing embedder."""
    try:
        return WordLlamaEmbedder()
    except ConfigurationError:
        return HashingEmbedder()


async def embed_checked(embedder: Embedder, texts: Sequence[str]) -> Matrix:
    """``embedder.embed(texts)``, refusing a result of the wrong shape or with NaN/infinity:
    a broken model must not put vectors into the log that every replay would then refuse."""
    out = np.asarray(await embedder.embed(texts), dtype=np.float32)
    if out.shape != (len(texts), embedder.dimension):
        raise InvalidVectorError(
            f"embedder {embedder.name} returned shape {out.shape} for {len(texts)} texts "
            f"(dimension {embedder.dimension})"
        )
    if not np.isfinite(out).all():
        raise InvalidVectorError(f"embedder {embedder.name} returned NaN or infinity")
    return out
