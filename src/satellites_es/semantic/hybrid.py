"""Hybrid retrieval: a BM25 leg and a vector leg, run concurrently, fused by reciprocal rank
weighted by each leg's confidence in this query.

Each leg returns its ``depth`` best documents, ranked 1..n: the text leg from Elasticsearch (a
``multi_match`` over the text fields, the metadata filter as ``term`` filters), the vector leg
from FAISS (the query embedded by the model of the namespace's active version, the same filter
as a metadata equality filter; concurrent searches are coalesced into batched FAISS searches by
:class:`~satellites_es.vectors.VectorIndex`). Reciprocal rank fusion (Cormack et al., 2009)
scores a document ``sum(weight_leg / (k_rrf + rank_leg))`` over the legs that found it: it needs
no score calibration between BM25 and cosine, which are not comparable. Ties keep the order of
the legs' ranks.

**Per-query leg weights.** Plain RRF lands between the legs when one of them fails on a query
(BM25 on a word typed in another inflection than the documents', a lexical embedding on the
same): it never falls to the worse leg but does not reach the better one either. So each leg's
weight is its static weight times its *confidence* in this query raised to ``confidence``
(default :data:`CONFIDENCE`): the confidence is the normalised query commitment (NQC, Shtok et
al., 2012: the standard deviation of the leg's scores over its ``depth`` hits divided by their
mean), a query-performance predictor that needs only the leg's own scores. A leg whose best
hits stand out from the rest is committed to them; one whose scores are flat (BM25 matching one
common word of the query in every hit) is not. The two weights are rescaled to the static
weights' sum, so fused scores stay on the same scale. ``confidence=0`` is plain weighted RRF.
The exponent was chosen on tuning sets made like the evaluation sets but with other seeds,
never on the evaluation sets (BENCHMARKS.md, "Semantic layer").

**A lexical embedder's leg.** Comparing the two legs' NQC assumes their evidence is
independent: an embedder that declares itself ``lexical`` (feature hashing) is made of the same
words BM25 matches, so it misses the same spellings and its commitment does not show it. It is
a noisier copy of the text leg's evidence, and any weight on it moves documents BM25 ranked
well below ones it ranked worse. So by default its leg's weight is scaled by
:data:`LEXICAL_WEIGHT` (0): the fused order is the text leg's, hits BM25 scored equally (which
share a rank) go in the order of the better of their two ranks, and the vector leg's hits
follow the text leg's when it found fewer than ``k``. That factor was chosen on the tuning
sets like the exponent (the largest worst-case ratio to the better leg, with both the
``standard`` and the ``english`` text analyzers); passing ``confidence`` explicitly fuses a
lexical leg like any other (see :class:`~.store.SemanticStore`).

A hit carries its fused score, its rank in each leg (None where that leg did not return it), its
metadata, and a snippet: the highlighted fragment of the text leg, else the stored snippet.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigurationError
from ..vectors import VectorMatch
from .schema import SNIPPET

__all__ = [
    "CONFIDENCE",
    "LEXICAL_WEIGHT",
    "Mode",
    "SearchHit",
    "TextHit",
    "commitment",
    "fuse",
    "text_query",
]

Mode = Literal["hybrid", "vector", "text"]
#: The constant of reciprocal rank fusion (60 in the paper and in Elasticsearch's RRF).
RRF_K = 60
#: The default exponent of each leg's confidence (see the module docstring).
CONFIDENCE = 6.0
#: The default factor of a lexical embedder's leg weight in a hybrid search (module docstring).
LEXICAL_WEIGHT = 0.0


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


def check_confidence(confidence: float) -> float:
    if not (confidence >= 0 and math.isfinite(confidence)):
        raise ConfigurationError("search(confidence=...)", "a finite number >= 0")
    return float(confidence)


def commitment(scores: Sequence[float]) -> float | None:
    """The normalised query commitment of one leg's scores (higher is better, e.g. BM25 or
    cosine): their standard deviation over their mean; 0 for a mean <= 0 (a leg whose best hits
    are not even similar to the query on average commits to none); None for fewer than two
    hits, where a spread means nothing."""
    if len(scores) < 2:
        return None
    mean = statistics.fmean(scores)
    return statistics.pstdev(scores) / mean if mean > 0 else 0.0


def leg_weights(
    text: Sequence[float], vector: Sequence[float], weights: tuple[float, float],
    confidence: float,
) -> tuple[float, float]:  # fmt: skip
    """The static weights times each leg's commitment ** confidence, rescaled to their sum; the
    static weights alone when ``confidence`` is 0, a leg has fewer than two hits, or neither
    leg commits."""
    c_text, c_vector = commitment(text), commitment(vector)
    if confidence == 0 or c_text is None or c_vector is None:
        return weights
    # c ** confidence in logarithms, relative to the larger: no overflow for a wild spread
    logs = [confidence * math.log(c) if c > 0 else -math.inf for c in (c_text, c_vector)]
    top = max(logs)
    if top == -math.inf:
        return weights
    w_text, w_vector = (w * math.exp(lg - top) for w, lg in zip(weights, logs, strict=True))
    total = w_text + w_vector
    if not total > 0:
        return weights
    scale = (weights[0] + weights[1]) / total
    return w_text * scale, w_vector * scale


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
    confidence: float = 0.0,
) -> list[SearchHit]:
    """The ``k`` best of both rankings by weighted reciprocal rank fusion, each leg's weight
    scaled by its commitment to this query ** ``confidence`` (0: the static weights)."""
    w_text, w_vector = leg_weights(
        [t.score for t in text], [v.score for v in vector], weights, confidence
    )
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
