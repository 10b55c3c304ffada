"""The demo's bundled sample corpus: a few thousand short documents and their authors.

Generated deterministically (a seeded RNG over fixed topic vocabularies), so the corpus is the
same on every machine and needs no download.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Author", "Document", "sample_corpus"]

TOPICS: dict[str, tuple[str, ...]] = {
    "vector-search": ("embedding", "nearest", "neighbour", "cosine", "index", "faiss", "recall",
                      "hnsw", "quantization", "similarity", "vector", "retrieval"),
    "databases": ("postgres", "transaction", "index", "query", "replication", "vacuum", "table",
                  "lock", "snapshot", "isolation", "wal", "schema"),
    "messaging": ("rabbitmq", "queue", "broker", "exchange", "consumer", "publisher", "ack",
                  "confirm", "routing", "partition", "dead-letter", "delivery"),
    "caching": ("redis", "cache", "eviction", "ttl", "pipeline", "hit", "miss", "key", "memory",
                "invalidation", "warmup", "latency"),
    "search": ("elasticsearch", "analyzer", "token", "relevance", "bm25", "alias", "shard",
               "mapping", "query", "highlight", "facet", "synonym"),
    "ml-ops": ("model", "training", "feature", "pipeline", "drift", "evaluation", "dataset",
               "inference", "batch", "gpu", "checkpoint", "deployment"),
}  # fmt: skip
VERBS = ("improves", "explains", "measures", "breaks", "tunes", "compares", "scales", "replays")
FORMS = (
    "notes on",
    "a field guide to",
    "lessons from",
    "benchmarking",
    "debugging",
    "why we chose",
)
FIRST = ("Ada", "Grace", "Alan", "Barbara", "Edsger", "Donald", "Frances", "Ken", "Leslie", "Radia")
LAST = ("Lovelace", "Hopper", "Turing", "Liskov", "Dijkstra", "Knuth", "Allen", "Thompson",
        "Lamport", "Perlman")  # fmt: skip


@dataclass(frozen=True)
class Author:
    id: str
    name: str
    topic: str


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    body: str
    topic: str
    author_id: str


def sample_corpus(
    documents: int = 3000, authors: int = 100, seed: int = 42
) -> tuple[list[Author], list[Document]]:
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    people = [
        Author(f"author-{i:04d}", f"{rng.choice(FIRST)} {rng.choice(LAST)}", rng.choice(topics))
        for i in range(authors)
    ]
    docs = [_document(rng, i, rng.choice(people)) for i in range(documents)]
    return people, docs


def _document(rng: random.Random, i: int, author: Author) -> Document:
    topic = author.topic if rng.random() < 0.8 else rng.choice(sorted(TOPICS))
    words = TOPICS[topic]
    a, b, c = rng.sample(words, 3)
    title = f"{rng.choice(FORMS).capitalize()} {a} and {b}"
    sentences = [
        f"The {a} {rng.choice(VERBS)} the {b} when the {c} is under load.",
        f"We {rng.choice(VERBS).rstrip('s')} {rng.choice(words)} with {rng.choice(words)} in production.",
        f"Our {rng.choice(words)} keeps the {rng.choice(words)} honest.",
    ]
    return Document(f"doc-{i:05d}", title, " ".join(sentences), topic, author.id)
