"""The semantic layer: documents and entities written as one change set, routed to a text
index, a vector namespace and caches, searched by hybrid retrieval, read consistently.

``schema`` (a collection and the projections serving it), ``embedders`` (the model protocol,
the hashing fallback, WordLlama), ``changeset`` (operations committed in one append),
``vectorsink`` (each vector version built by one model), ``hybrid`` (BM25 + vectors fused by
reciprocal rank, each leg weighted by its confidence in the query), ``consistency``
(``wait_for``: read your own writes), ``store`` (the :class:`SemanticStore` tying them
together), ``reembed`` (a new model, blue/green, also ``satellites-es reembed``),
``evaluation`` (labelled query sets, tuning sets, recall/nDCG).
"""

from __future__ import annotations

from .changeset import ChangeSet, Committed
from .embedders import Embedder, HashingEmbedder, WordLlamaEmbedder, default_embedder
from .hybrid import SearchHit
from .reembed import reembed, rollback_embeddings
from .schema import SemanticSchema
from .store import SemanticStore

__all__ = [
    "ChangeSet",
    "Committed",
    "Embedder",
    "HashingEmbedder",
    "SearchHit",
    "SemanticSchema",
    "SemanticStore",
    "WordLlamaEmbedder",
    "default_embedder",
    "reembed",
    "rollback_embeddings",
]
