"""Offline replay of hybrid fusion: both legs' hits stored once, fusion candidates compared.

``python bench/semantic_replay.py collect PATH``: loads the 3,000-document evaluation corpus
into a collection per (text analyzer, embedder) pair through the real stores (the bench
stage's ``_layer``/``_load``) and stores, for every query of the tuning sets and the kept sets,
each leg's 100 best hits with their scores (``standard`` and ``english`` text legs, the
hashing and WordLlama vector legs).

``python bench/semantic_replay.py compare PATH``: fuses the stored legs with each candidate
(``CANDIDATES``) through :func:`satellites_es.semantic.hybrid.fuse` or the candidate's own
fusion, and prints nDCG@10 / recall@10 per (set, embedder, analyzer), with the ratio to the
better leg. Settings are chosen on the tuning sets' lines alone; the kept sets' lines are the
held-out figures. Fusing stored hits is what ``search`` does after its two legs return, so the
figures equal the live bench's up to ties the emulator breaks differently between calls.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stages.semantic import _layer, _load, load_eval_sets  # noqa: E402
from satellites_es.semantic import HashingEmbedder, WordLlamaEmbedder, hybrid  # noqa: E402
from satellites_es.semantic.evaluation import ndcg_at, recall_at, tuning_sets  # noqa: E402
from satellites_es.vectors import VectorMatch  # noqa: E402

DEPTH = 100
Hits = list[tuple[str, float]]


async def collect(path: Path) -> None:
    sets = {**tuning_sets(), **load_eval_sets()}
    out: dict[str, Any] = {"sets": {n: [q.to_json() for q in qs] for n, qs in sets.items()},
                           "text": {}, "vector": {}}  # fmt: skip
    pairs = [("standard", HashingEmbedder(384)), ("english", WordLlamaEmbedder())]
    async with _layer() as data:
        for i, (analyzer, model) in enumerate(pairs):
            store = await _load(data, f"replay{i}", model, 3000,
                                None if analyzer == "standard" else analyzer)  # fmt: skip
            short = model.name.split("-")[0]
            text: dict[str, list[Hits]] = {}
            vector: dict[str, list[Hits]] = {}
            for name, queries in sets.items():
                text[name], vector[name] = [], []
                for q in queries:
                    t = await store._text_leg(q.query, DEPTH, {})
                    v, _ = await store._vector_leg(q.query, DEPTH, {})
                    text[name].append([(h.id, h.score) for h in t])
                    vector[name].append([(h.id, h.score) for h in v])
            out["text"][analyzer] = text
            out["vector"][short] = vector
            await store.service.stop()  # type: ignore[attr-defined]
            print(f"collected {analyzer} / {short}", flush=True)
    await asyncio.to_thread(path.write_text, json.dumps(out))


def _text(hits: Hits) -> list[hybrid.TextHit]:
    return [hybrid.TextHit(i, s, {}, "") for i, s in hits]


def _vector(hits: Hits) -> list[VectorMatch]:
    return [VectorMatch(i, s, {}) for i, s in hits]


Fusion = Callable[[Hits, Hits, bool], list[str]]


def via_fuse(**options: Any) -> Fusion:
    def run(text: Hits, vector: Hits, lexical: bool) -> list[str]:
        opts = dict(options)
        if lexical and "lexical_confidence" in opts:
            opts["confidence"] = opts.pop("lexical_confidence")
        opts.pop("lexical_confidence", None)
        depth = opts.pop("depth", 50)
        return [h.id for h in hybrid.fuse(_text(text[:depth]), _vector(vector[:depth]), 10,
                                          **opts)]  # fmt: skip

    return run


def convex(norm: str, confidence: float = 0.0, depth: int = 50) -> Fusion:
    """Weighted sum of normalised scores (min-max or z-score), weights from NQC ** confidence."""

    def normed(scores: Sequence[float]) -> list[float]:
        if not scores:
            return []
        if norm == "minmax":
            lo, hi = min(scores), max(scores)
            return [(s - lo) / (hi - lo) if hi > lo else 1.0 for s in scores]
        import statistics

        mu = statistics.fmean(scores)
        sd = statistics.pstdev(scores) or 1.0
        return [(s - mu) / sd for s in scores]

    def run(text: Hits, vector: Hits, lexical: bool) -> list[str]:
        text, vector = text[:depth], vector[:depth]
        w = hybrid.leg_weights([s for _, s in text], [s for _, s in vector], (1.0, 1.0),
                               0.0 if lexical else confidence)  # fmt: skip
        floor = 0.0 if norm == "minmax" else -3.0
        score: dict[str, list[float]] = {}
        for leg, (weight, hits) in enumerate(zip(w, (text, vector), strict=True)):
            for (doc, _), s in zip(hits, normed([s for _, s in hits]), strict=True):
                score.setdefault(doc, [floor, floor])[leg] = weight * s
        return sorted(score, key=lambda d: -sum(score[d]))[:10]

    return run


def mnz(confidence: float = 0.0, depth: int = 50) -> Fusion:
    """CombMNZ over min-max scores: the sum times the number of legs that found the doc."""

    def run(text: Hits, vector: Hits, lexical: bool) -> list[str]:
        text, vector = text[:depth], vector[:depth]
        w = hybrid.leg_weights([s for _, s in text], [s for _, s in vector], (1.0, 1.0),
                               0.0 if lexical else confidence)  # fmt: skip
        score: dict[str, list[float]] = {}
        for weight, hits in zip(w, (text, vector), strict=True):
            scores = [s for _, s in hits]
            if not scores:
                continue
            lo, hi = min(scores), max(scores)
            for doc, s in hits:
                score.setdefault(doc, []).append(weight * ((s - lo) / (hi - lo) if hi > lo else 1))
        return sorted(score, key=lambda d: -sum(score[d]) * len(score[d]))[:10]

    return run


def compare(path: Path, only: str | None = None) -> None:
    from satellites_es.semantic.evaluation import EvalQuery

    raw = json.loads(path.read_text())
    sets = {n: [EvalQuery.from_json(q) for q in qs] for n, qs in raw["sets"].items()}
    cands = {k: v for k, v in candidates().items() if not only or only in k}
    short_names = {n: n.replace("tuning-", "t-").replace("inflected", "infl") for n in sets}
    for analyzer in raw["text"]:
        for short in raw["vector"]:
            lexical = short == "hashing"
            print(f"\n== text analyzer {analyzer}, embedder {short}: nDCG@10 (ratio to the "
                  "better leg) / recall@10")  # fmt: skip
            print(f"{'':36}" + "".join(f"{short_names[n]:>24}" for n in sets) + "  worst tuning")
            legs: dict[str, list[str]] = {"text": [], "vector": []}
            bests = {}
            rows: dict[str, list[str]] = {}
            worst: dict[str, float] = {}
            for name, queries in sets.items():
                text, vector = raw["text"][analyzer][name], raw["vector"][short][name]

                def measure(ranked: list[list[str]], qs: Any = queries) -> tuple[float, float]:
                    n = len(qs)
                    return (sum(ndcg_at(r, q) for r, q in zip(ranked, qs, strict=True)) / n,
                            sum(recall_at(r, q) for r, q in zip(ranked, qs, strict=True)) / n)  # fmt: skip

                t = measure([[d for d, _ in h[:10]] for h in text])
                v = measure([[d for d, _ in h[:10]] for h in vector])
                legs["text"].append(f"{t[0]:.3f}/{t[1]:.3f}")
                legs["vector"].append(f"{v[0]:.3f}/{v[1]:.3f}")
                bests[name] = max(t[0], v[0])
                for label, fusion in cands.items():
                    ranked = [fusion(a, b, lexical) for a, b in zip(text, vector, strict=True)]
                    nd, rc = measure(ranked)
                    rows.setdefault(label, []).append(f"{nd:.3f} ({nd / bests[name]:.4f})/{rc:.3f}")
                    if name.startswith("tuning"):
                        worst[label] = min(worst.get(label, 9.0), nd / bests[name])
            for leg, cells in legs.items():
                print(f"  {leg:34}" + "".join(f"{c:>24}" for c in cells))
            for label, cells in rows.items():
                print(f"  {label:34}" + "".join(f"{c:>24}" for c in cells)
                      + f"  {worst[label]:.3f}")  # fmt: skip


def weighted_rrf(
    confidence: Callable[[Sequence[float]], float], p: float, *, rrf_k: int = 60,
    depth: int = 50, lexical_weight: float | None = None,
) -> Fusion:  # fmt: skip
    """RRF with per-query weights ``confidence(leg's scores) ** p`` (rescaled to sum 2); with a
    lexical embedder, static weights (1, ``lexical_weight``), or the confidence ones if None."""

    def run(text: Hits, vector: Hits, lexical: bool) -> list[str]:
        text, vector = text[:depth], vector[:depth]
        if lexical and lexical_weight is not None:
            w = (1.0, lexical_weight)
        else:
            c = [confidence([s for _, s in h]) if len(h) > 1 else 0.0 for h in (text, vector)]
            raw_w = [x**p for x in c]
            total = sum(raw_w)
            w = (1.0, 1.0) if not total > 0 else (2 * raw_w[0] / total, 2 * raw_w[1] / total)
        return [h.id for h in hybrid.fuse(_text(text), _vector(vector), 10, w, rrf_k=rrf_k)]

    return run


def lexicographic(depth: int = 50) -> Fusion:
    """With a lexical embedder: the text leg's order, its ties ordered by the vector leg."""

    def run(text: Hits, vector: Hits, lexical: bool) -> list[str]:
        text, vector = text[:depth], vector[:depth]
        if not lexical:
            return via_fuse(confidence=6.0)(text, vector, lexical)
        t_rank = dict(
            zip((d for d, _ in text), hybrid._tied_ranks([s for _, s in text]), strict=True)
        )
        v_rank = dict(
            zip((d for d, _ in vector), hybrid._tied_ranks([s for _, s in vector]), strict=True)
        )
        docs = list(dict.fromkeys([d for d, _ in text] + [d for d, _ in vector]))
        inf = 10**9
        return sorted(docs, key=lambda d: (t_rank.get(d, inf), v_rank.get(d, inf)))[:10]

    return run


def nqc(scores: Sequence[float]) -> float:
    return hybrid.commitment(scores) or 0.0


def nqc_top(n: int) -> Callable[[Sequence[float]], float]:
    return lambda scores: nqc(scores[:n])


def gap(n: int) -> Callable[[Sequence[float]], float]:
    """(score at rank 1 - score at rank n) / score at rank 1."""
    return lambda s: (s[0] - s[min(n, len(s)) - 1]) / s[0] if s and s[0] > 0 else 0.0


def candidates() -> dict[str, Fusion]:
    out: dict[str, Fusion] = {
        "current (NQC^6, plain for lexical)": via_fuse(confidence=6.0, lexical_confidence=0.0),
        "plain RRF k=60": via_fuse(),
    }
    for w in (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7):
        out[f"NQC^6, lexical weight {w}"] = weighted_rrf(nqc, 6, lexical_weight=w)
    out["lexicographic for lexical"] = lexicographic()
    for p in (4, 8, 10, 12):
        out[f"NQC^{p}"] = weighted_rrf(nqc, p, lexical_weight=1.0)
    for k in (1, 5, 10, 20, 100, 200):
        out[f"RRF k={k} NQC^6"] = via_fuse(rrf_k=k, confidence=6.0, lexical_confidence=0.0)
    out["NQC^6 depth 100"] = weighted_rrf(nqc, 6, depth=100, lexical_weight=1.0)
    for n in (10, 20):
        for p in (2, 4, 6):
            out[f"NQC top-{n} ^{p}"] = weighted_rrf(nqc_top(n), p, lexical_weight=1.0)
    for n in (10, 50):
        for p in (1, 2, 4, 6):
            out[f"gap@{n} ^{p}"] = weighted_rrf(gap(n), p, lexical_weight=1.0)
    for p in (0, 2, 6):
        out[f"minmax NQC^{p}"] = convex("minmax", p)
        out[f"zscore NQC^{p}"] = convex("zscore", p)
        out[f"CombMNZ NQC^{p}"] = mnz(p)
    return out


if __name__ == "__main__":
    command, where = sys.argv[1], Path(sys.argv[2])
    if command == "collect":
        asyncio.run(collect(where))
    else:
        compare(where, sys.argv[3] if len(sys.argv) > 3 else None)
