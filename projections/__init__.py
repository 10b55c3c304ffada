"""The projections the demo (and a typical retrieval backend) uses, defined in code.

* ``documents``: document events -> an Elasticsearch index with full-text fields;
* ``embeddings``: embedding events -> a FAISS namespace with metadata (d=384, cosine);
* ``entities``: entity events -> a Redis cache with a TTL.

``satellites-es`` finds them through ``SATELLITES_PROJECTIONS_MODULE`` (default ``projections``),
which must define ``PROJECTIONS``: a mapping of name to :class:`~satellites_es.Projection`.
"""

from __future__ import annotations

from satellites_es.projections import Projection

from .documents import documents
from .embeddings import embeddings
from .entities import entities

PROJECTIONS: dict[str, Projection] = {p.name: p for p in (documents, embeddings, entities)}

__all__ = ["PROJECTIONS", "documents", "embeddings", "entities"]
