"""Async FAISS namespaces: :class:`VectorIndex` and its :class:`VectorMatch` results.

Modules: ``index`` (the async API, locks and workers), ``namespace`` (one FAISS index with its id
map, metadata and delete strategy per index kind), ``coalesce`` (batching of concurrent queries),
``exact`` (batched flat searches on numpy's BLAS),
``persistence`` (atomic, verified snapshots), ``filters`` (metadata equality), ``validation``.
"""

from __future__ import annotations

from .index import VectorIndex
from .models import IndexKind, Metric, NamespaceSpec, VectorMatch

__all__ = ["IndexKind", "Metric", "NamespaceSpec", "VectorIndex", "VectorMatch"]
