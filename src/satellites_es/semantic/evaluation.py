"""A labelled evaluation set made from the demo corpus, and recall@k / nDCG@k.

**How the sets are made** (:func:`make_eval_set`, deterministic: the demo corpus is seeded, and
so is this): for each of 60 queries, a seeded RNG picks a topic of the corpus and two distinct
words of that topic's vocabulary, and a third word from another topic's vocabulary (noise, as
in a real user's query: a word that pulls towards the wrong documents); the query is the three
words. A document's relevance grade is
2 when it is of the query's topic and contains both words (in its title or body), 1 when it is
of the topic and contains one of them, 0 otherwise: the intent is the topic, the words say what
about it, and a document of another topic that shares a word ("index", "query", "pipeline" are
in two vocabularies) is not relevant. Queries with fewer than 3 documents of grade 2 are skipped.
Two sets are kept in the repository (``bench/data/semantic_eval.json``; a test checks they equal
what this function makes): ``exact`` (seed 7) spells the words as the corpus does, which favours
BM25 (the corpus is made of its vocabulary words); ``inflected`` (seed 8) types the second word
in the plural (``queue`` -> ``queues``), a vocabulary mismatch the standard analyzer does not
stem away and a subword model does. The *tuning* sets (:data:`TUNING_SETS`, seeds 1001-1004, two
of each kind, made on the fly) are where the fusion's settings were chosen; the kept sets
are the held-out ones the figures are reported on.

**Metrics**, per query then averaged: ``recall@k`` is the share of the grade-2 documents found in
the top ``k``, over ``min(k, their number)`` (capped, as BEIR reports it: a query with 40 relevant
documents can find at most ``k``); ``nDCG@k`` is the discounted cumulative gain of the grades
(``(2^grade - 1) / log2(rank + 1)``) over that of the ideal ranking.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..demo.corpus import TOPICS, Document, sample_corpus

__all__ = [
    "EVAL_SETS",
    "TUNING_SETS",
    "EvalQuery",
    "document_fields",
    "eval_sets",
    "make_eval_set",
    "ndcg_at",
    "plural",
    "recall_at",
    "tuning_sets",
]

#: The sets kept in the repository: name -> make_eval_set arguments.
EVAL_SETS: dict[str, dict[str, Any]] = {
    "exact": {"seed": 7, "inflect": False},
    "inflected": {"seed": 8, "inflect": True},
}

#: Sets made like the kept ones with other seeds, for choosing settings (never the kept ones).
TUNING_SETS: dict[str, dict[str, Any]] = {
    "tuning-exact-a": {"seed": 1001, "inflect": False},
    "tuning-exact-b": {"seed": 1002, "inflect": False},
    "tuning-inflected-a": {"seed": 1003, "inflect": True},
    "tuning-inflected-b": {"seed": 1004, "inflect": True},
}

_WORD = re.compile(r"[a-z0-9-]+")


@dataclass(frozen=True)
class EvalQuery:
    query: str
    topic: str
    #: document id -> grade (1 or 2); documents not listed are grade 0
    grades: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "topic": self.topic,
            "grades": dict(sorted(self.grades.items())),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> EvalQuery:
        return cls(
            str(raw["query"]), str(raw["topic"]), {str(k): int(v) for k, v in raw["grades"].items()}
        )


def document_fields(doc: Document) -> dict[str, Any]:
    """A corpus document as the fields a semantic collection stores."""
    return {"title": doc.title, "body": doc.body, "topic": doc.topic, "author_id": doc.author_id}


def make_eval_set(
    documents: int = 3000, queries: int = 60, seed: int = 7, *, inflect: bool = False
) -> list[EvalQuery]:
    """See the module docstring."""
    _, docs = sample_corpus(documents=documents)
    words = [set(_WORD.findall(f"{d.title} {d.body}".lower())) for d in docs]
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    out: list[EvalQuery] = []
    while len(out) < queries:
        topic = rng.choice(topics)
        a, b = rng.sample(TOPICS[topic], 2)
        other = rng.choice([t for t in topics if t != topic])
        noise = rng.choice([w for w in TOPICS[other] if w not in TOPICS[topic]])
        grades = {}
        for doc, present in zip(docs, words, strict=True):
            hits = (a in present) + (b in present)
            if doc.topic == topic and hits:
                grades[doc.id] = hits
        if sum(1 for g in grades.values() if g == 2) >= 3:
            out.append(EvalQuery(f"{a} {plural(b) if inflect else b} {noise}", topic, grades))
    return out


def eval_sets() -> dict[str, list[EvalQuery]]:
    """Every set of :data:`EVAL_SETS`, made from the 3,000-document demo corpus."""
    return {name: make_eval_set(**args) for name, args in EVAL_SETS.items()}


def tuning_sets() -> dict[str, list[EvalQuery]]:
    """Every set of :data:`TUNING_SETS`, made from the 3,000-document demo corpus."""
    return {name: make_eval_set(**args) for name, args in TUNING_SETS.items()}


def recall_at(ranked: Sequence[str], query: EvalQuery, k: int = 10) -> float:
    relevant = {d for d, g in query.grades.items() if g == 2}
    found = sum(1 for d in ranked[:k] if d in relevant)
    return found / min(k, len(relevant))


def ndcg_at(ranked: Sequence[str], query: EvalQuery, k: int = 10) -> float:
    def dcg(grades: Sequence[int]) -> float:
        return float(sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(grades[:k])))

    ideal = dcg(sorted(query.grades.values(), reverse=True))
    return dcg([query.grades.get(d, 0) for d in ranked]) / ideal if ideal else 0.0


def plural(word: str) -> str:
    """The English plural the way a user would type it: ``queue`` -> ``queues``,
    ``index`` -> ``indexes``, ``latency`` -> ``latencies``."""
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"
