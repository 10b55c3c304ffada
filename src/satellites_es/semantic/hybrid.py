"""Hybrid retrieval: a BM25 leg and a vector leg, run concurrently, fused by reciprocal rank.

Each leg returns its ``depth`` best documents, ranked 1..n: the text leg from Elasticsearch (a
``multi_match`` over the text fields, the metadata filter as ``term`` filters), the vector leg
from FAISS (the query embedded by the model of the namespace's active version, the same filter
as a metadata equality filter; concurrent searches are coalesced into batched FAISS searches by
:class:`~satellites_es.vectors.VectorIndex`). Reciprocal rank fusion (Cormack et al., 2009)
scores a document ``sum(weight_leg / (k_rrf + rank_leg))`` over the legs that found it: it needs
no score calibration between BM25 and cosine, which are not comparable. Ties keep the order of
the legs' ranks.

A hit carries its fused score, its rank in each leg (None where that leg did not return it), its
metadata, and a snippet: the highlighted fragment of the text leg, else the stored snippet.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigurationError
from ..vectors import VectorMatch
from .schema import SNIPPET

__all__ = ["Mode", "SearchHit", "TextHit", "fuse", "text_query"]

Mode = Literal["hybrid", "vector", "text"]
#: The constant of reciprocal rank fusion (60 in the paper and in Elasticsearch's RRF).
RRF_K = 60


@dataclass(frozen=True)
class SearchHit:
    """One fused result: ``score`` is the fused RRF score (higher is better); ``text_rank`` and
    ``vector_rank`` are its rank in each leg, None where that leg did not return it."""

    id: str
    score: float
    text_rank: int | None
    vector_rank: int | None
    metadata: Mapping[str, Any]
    snippet: str


@dataclass(frozen=True)
class TextHit:
    """One hit of the text leg, its BM25 score and highlighted snippet."""

    id: str
    score: float
    metadata: Mapping[str, Any]
    snippet: str


def check_weights(weights: tuple[float, float]) -> tuple[float, float]:
    text, vector = weights
    if not (text >= 0 and vector >= 0 and text + vector > 0):
        raise ConfigurationError("search(weights=...)", "two weights >= 0, not both 0")
    return float(text), float(vector)


def text_query(query: str, fields: Sequence[str], flt: Mapping[str, Any] | None) -> dict[str, Any]:
    """The Elasticsearch query of the text leg."""
    must = {"multi_match": {"query": query, "fields": list(fields)}}
    terms = [{"term": {key: value}} for key, value in (flt or {}).items()]
    return {"bool": {"must": [must], "filter": terms}} if terms else must


def text_hits(
    response: Mapping[str, Any], metadata_fields: Sequence[str], text_fields: Sequence[str]
) -> list[TextHit]:
    out = []
    for hit in response["hits"]["hits"]:
        source = hit.get("_source") or {}
        fragments = [f for name in text_fields for f in hit.get("highlight", {}).get(name, ())]
        snippet = (
            fragments[0]
            if fragments
            else " ".join(str(source[f]) for f in text_fields if source.get(f))
        )
        meta = {f: source.get(f) for f in metadata_fields}
        out.append(TextHit(hit["_id"], float(hit["_score"] or 0.0), meta, snippet))
    return out


def fuse(
    text: Sequence[TextHit],
    vector: Sequence[VectorMatch],
    k: int,
    weights: tuple[float, float] = (1.0, 1.0),
    rrf_k: int = RRF_K,
) -> list[SearchHit]:
    """The ``k`` best of both rankings by weighted reciprocal rank fusion."""
    w_text, w_vector = weights
    score: dict[str, float] = {}
    ranks: dict[str, list[int | None]] = {}
    meta: dict[str, Mapping[str, Any]] = {}
    snippets: dict[str, str] = {}
    for rank, t in zip(_tied_ranks([t.score for t in text]), text, strict=True):
        score[t.id] = score.get(t.id, 0.0) + w_text / (rrf_k + rank)
        ranks.setdefault(t.id, [None, None])[0] = rank
        meta[t.id], snippets[t.id] = t.metadata, t.snippet
    for rank, v in zip(_tied_ranks([v.score for v in vector]), vector, strict=True):
        score[v.id] = score.get(v.id, 0.0) + w_vector / (rrf_k + rank)
        ranks.setdefault(v.id, [None, None])[1] = rank
        stored = dict(v.metadata or {})
        stored_snippet = str(stored.pop(SNIPPET, ""))
        meta.setdefault(v.id, stored)
        snippets.setdefault(v.id, stored_snippet)

    def order(doc: str) -> tuple[float, int]:
        best = min(r for r in ranks[doc] if r is not None)
        return (-score[doc], best)

    best = sorted(score, key=order)[:k]
    return [SearchHit(d, score[d], ranks[d][0], ranks[d][1], meta[d], snippets[d]) for d in best]


def _tied_ranks(scores: Sequence[float]) -> list[int]:
    """Competition ranks ("1224") of scores sorted best first: hits whose scores are equal (to
    float32 precision) share the best rank among them. BM25 ties often (same words, same
    length), and the order a leg happens to return tied hits in is not a judgement: with
    plain positions, fusion would read it as one and let it outweigh the other leg."""
    ranks: list[int] = []
    for i, value in enumerate(scores):
        if i and math.isclose(value, scores[i - 1], rel_tol=1e-6, abs_tol=1e-9):
            ranks.append(ranks[-1])
        else:
            ranks.append(i + 1)
    return ranks
