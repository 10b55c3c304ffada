"""Semantic layer benchmark: retrieval quality, hybrid latency, embedding throughput.

* ``quality``: recall@10 and nDCG@10 of the text leg, the vector leg (hashing, and WordLlama
  when the extra is installed) and hybrid, on the labelled set kept in
  ``bench/data/semantic_eval.json`` (made from the demo corpus: see
  :mod:`satellites_es.semantic.evaluation`), over the 3,000 documents it was made from, with
  the text fields analyzed by ``english`` (the bench's setup, as the demo's) and by the default
  ``standard`` analyzer (``[english]`` / ``[standard]`` on each line). Printed as lines; the
  figure ``hybrid_ndcg_vs_best_leg`` compares hybrid with the better leg with ``english``, a
  ``#`` line gives the same with ``standard``. The same lines for the tuning sets (other
  seeds, where the fusion's settings were chosen) are printed first, prefixed ``tuning``: the
  kept sets are held out from that choice.
* ``hybrid_p50`` / ``hybrid_p99``: one hybrid search at a time (k=10, legs of depth 50) at
  100,000 documents (``--quick``: 20,000) against the slower of its two legs alone, 30 queries
  of the evaluation sets (``--quick``: 20) through the same store, the modes taking turns per
  query. The projectors are stopped first (the FAISS index stays in memory), so that their
  polling does not compete with the searches. Goal <= 1.3x: the legs run concurrently,
  so hybrid should cost about its slower leg, plus fusion. Printed beside them: what a hybrid
  search costs beyond its own slower leg, both timed inside the same call (the layer's own
  overhead: waiting for the second leg, embedding the query, fusion), p50 and p99 in ms.
* ``embed_throughput``: documents/s of a change set's embedding step (batches of 256 through
  the embedder, each vector checked, encoded and put in its event) against calling the embedder
  on the same batches directly, in alternated rounds (10, ``--quick``: 6; each round runs both,
  the order swapped every round); the ratio is the median of the rounds' own ratios. Goal >=
  0.9x. ``embed_cpu``: the same runs' CPU time per document (raw over layer, so >1 is cheaper),
  the figure a loaded machine disturbs least; the load average is printed beside them.
* ``concurrent_hybrid``: searches/s of 64 hybrid searches (``--quick``: 32) made by 64
  concurrent callers against the same searches one at a time (no goal in the issue: it shows what concurrency buys on 2 cores).

Elasticsearch is the noida-db emulator unless ``SATELLITES_ES_URL`` names a real cluster; the
absolute figures are the emulator's, the ratios are what to compare.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.common import figure, median, percentile
from satellites_es.config import DataLayerConfig
from satellites_es.demo.corpus import sample_corpus
from satellites_es.facade import DataLayer
from satellites_es.semantic import (
    Embedder,
    HashingEmbedder,
    SemanticSchema,
    SemanticStore,
    WordLlamaEmbedder,
)
from satellites_es.semantic.changeset import EMBED_BATCH
from satellites_es.semantic.evaluation import (
    EvalQuery,
    document_fields,
    ndcg_at,
    recall_at,
    tuning_sets,
)
from satellites_es.testing.services import elasticsearch_url, find_service_url, unique_name

EVAL_SET = Path(__file__).resolve().parent.parent / "data" / "semantic_eval.json"
EVAL_DOCS = 3000
#: The text analyzer of the bench's collections: the corpus and the queries are English.
ANALYZER = "english"
#: Retrieval quality is measured with each (None: Elasticsearch's default, ``standard``).
ANALYZERS: tuple[str | None, ...] = (ANALYZER, None)
CONCURRENCY = 64
K = 10


def load_eval_sets() -> dict[str, list[EvalQuery]]:
    raw = json.loads(EVAL_SET.read_text())
    return {name: [EvalQuery.from_json(q) for q in qs] for name, qs in raw["sets"].items()}


def _models() -> list[Embedder]:
    models: list[Embedder] = [HashingEmbedder(384)]
    with contextlib.suppress(Exception):
        models.append(WordLlamaEmbedder())
    return models


@contextlib.asynccontextmanager
async def _layer() -> AsyncIterator[DataLayer]:
    name = unique_name("bsem")
    with elasticsearch_url() as es, tempfile.TemporaryDirectory() as faiss_dir:
        env = {
            "SATELLITES_POSTGRES_URL": find_service_url("postgres"),
            "SATELLITES_POSTGRES_SCHEMA": name,
            "SATELLITES_REDIS_URL": find_service_url("redis"),
            "SATELLITES_REDIS_KEY_PREFIX": f"{name}:",
            "SATELLITES_ELASTICSEARCH_URL": es,
            "SATELLITES_ELASTICSEARCH_INDEX_PREFIX": f"{name}-",
            "SATELLITES_FAISS_INDEX_PATH": faiss_dir,
            "SATELLITES_RABBITMQ_ENABLED": "false",
            "SATELLITES_RELAY_ENABLED": "false",
            # 64 concurrent searches queue in the emulator (one BM25 query at a time, seconds
            # each at 100k documents): the last one waits for all the others
            "SATELLITES_ELASTICSEARCH_REQUEST_TIMEOUT": "1800",
        }
        async with DataLayer(DataLayerConfig.from_env(env)) as data:
            try:
                yield data
            finally:
                await data.postgres.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
                found = await data.elasticsearch.indices.get(index=f"{name}-*")
                for index in found.body:
                    await data.elasticsearch.indices.delete(index=index)


def _schema(collection: str, model: Embedder, analyzer: str | None = ANALYZER) -> SemanticSchema:
    return SemanticSchema(collection, text_fields=("title", "body"), metadata_fields=("topic",),
                          embedders=(model,), text_analyzer=analyzer)  # fmt: skip


async def _load(
    data: DataLayer, collection: str, model: Embedder, n: int, analyzer: str | None = ANALYZER
) -> SemanticStore:
    """A collection of the first ``n`` corpus documents, its projections caught up."""
    store = SemanticStore(data, _schema(collection, model, analyzer))
    service = store.serve(poll_interval=0.1)
    service.projections = [store.schema.text, store.schema.vectors]
    _, docs = sample_corpus(documents=n)
    position = 0
    for start in range(0, n, 2000):
        changes = store.changeset()
        for d in docs[start : start + 2000]:
            changes.put_document(d.id, document_fields(d))
        position = (await changes.commit()).position or position
    await service.start()
    await data.wait_for(position, timeout=1800)
    store.service = service  # type: ignore[attr-defined]  # stopped by the caller
    return store


async def _ranked(store: SemanticStore, q: EvalQuery, mode: str) -> list[str]:
    return [h.id for h in await store.search(q.query, K, mode=mode)]  # type: ignore[arg-type]


async def _quality(
    data: DataLayer, sets: dict[str, list[EvalQuery]]
) -> dict[tuple[str, str, str], dict[str, float]]:
    """(set, analyzer, leg) -> recall@10 and nDCG@10, the legs: text, vector and hybrid per
    model, with each text analyzer of ``ANALYZERS``."""
    out: dict[tuple[str, str, str], dict[str, float]] = {}
    for analyzer in ANALYZERS:
        for i, model in enumerate(_models()):
            name = analyzer or "standard"
            store = await _load(data, f"eval_{name}_{i}", model, EVAL_DOCS, analyzer)
            short = model.name.split("-")[0]
            modes = (("text", "text"), (f"vector ({short})", "vector"),
                     (f"hybrid ({short})", "hybrid"))  # fmt: skip
            for set_name, queries in sets.items():
                for label, mode in modes:
                    if (label == "text" and i > 0) or (label.startswith("vector") and analyzer
                                                       != ANALYZERS[0]):  # fmt: skip
                        continue  # the same leg as already measured
                    ranked = [await _ranked(store, q, mode) for q in queries]
                    pairs = list(zip(ranked, queries, strict=True))
                    out[(set_name, name, label)] = {
                        "recall@10": sum(recall_at(r, q) for r, q in pairs) / len(pairs),
                        "nDCG@10": sum(ndcg_at(r, q) for r, q in pairs) / len(pairs),
                    }
            await store.service.stop()  # type: ignore[attr-defined]
    for (set_name, _, label), m in list(out.items()):  # the vector legs, under each analyzer
        if label.startswith("vector"):
            for analyzer in ANALYZERS[1:]:
                out[(set_name, analyzer or "standard", label)] = m
    return out


async def _latency(
    store: SemanticStore, queries: list[EvalQuery], n: int
) -> dict[str, list[float]]:
    """Seconds per search of ``n`` queries in each mode, the modes taking turns per query so
    that drift on a shared machine hits them alike; ``overhead``: per hybrid search, its time
    beyond the slower of its own two legs, each leg timed inside that call."""
    times: dict[str, list[float]] = {"hybrid": [], "text": [], "vector": [], "overhead": []}
    legs: list[float] = []
    for name in ("_text_leg", "_vector_leg"):
        setattr(store, name, _timed(getattr(store, name), legs))
    for q in (queries * (1 + n // len(queries)))[:n]:
        for mode in ("hybrid", "text", "vector"):
            legs.clear()
            started = time.perf_counter()
            await store.search(q.query, K, mode=mode)
            times[mode].append(time.perf_counter() - started)
            if mode == "hybrid":
                times["overhead"].append(times[mode][-1] - max(legs))
    for name in ("_text_leg", "_vector_leg"):
        delattr(store, name)
    return times


def _timed(leg: Any, out: list[float]) -> Any:
    async def timed(*args: Any) -> Any:
        started = time.perf_counter()
        try:
            return await leg(*args)
        finally:
            out.append(time.perf_counter() - started)

    return timed


def _latency_figure(
    times: dict[str, list[float]], slower: str, q: float, note: str
) -> dict[str, Any]:
    hybrid, leg = percentile(times["hybrid"], q) * 1000, percentile(times[slower], q) * 1000
    return figure(hybrid, leg, f"ms vs {slower} leg alone", "<= 1.3x", note=note)


async def _concurrent(
    store: SemanticStore, queries: list[EvalQuery], n: int
) -> tuple[float, float]:
    """Searches/s: ``n`` hybrid searches by 64 concurrent callers vs one at a time."""
    texts = [q.query for q in (queries * (1 + n // len(queries)))[:n]]
    started = time.perf_counter()
    for t in texts:
        await store.search(t, K)
    serial = len(texts) / (time.perf_counter() - started)
    pending = list(texts)

    async def caller() -> None:
        while pending:
            await store.search(pending.pop(), K)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    return len(texts) / (time.perf_counter() - started), serial


async def _embedding(store: SemanticStore, n: int, rounds: int) -> dict[str, list[float]]:
    """Per round, a change set's embedding step and the embedder called directly on the same
    batches, one after the other, the order swapped every round (ABBA) so that drift in the
    machine's load hits both alike. Per run: documents/s (wall clock) and CPU seconds per
    1,000 documents (this process, every thread: the model runs in a worker thread), which a
    neighbour's load disturbs far less than the wall clock, as long as it does not evict
    caches. A garbage collection before each run keeps the last run's garbage out of it."""
    _, docs = sample_corpus(documents=n, seed=11)
    model = await store.write_embedder()
    texts = [store.schema.embed_text(document_fields(d)) for d in docs]
    out: dict[str, list[float]] = {"layer": [], "raw": [], "layer_cpu": [], "raw_cpu": []}

    async def raw() -> None:
        for s in range(0, n, EMBED_BATCH):
            await model.embed(texts[s : s + EMBED_BATCH])

    for r in range(rounds):
        for which in ("raw", "layer") if r % 2 == 0 else ("layer", "raw"):
            changes = store.changeset()
            for d in docs:
                changes.put_document(d.id, document_fields(d))
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            await (raw() if which == "raw" else changes.events(model))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            out[which].append(n / wall)
            out[f"{which}_cpu"].append(cpu / n * 1_000_000)
    return out


def _embedding_figures(runs: dict[str, list[float]], model: str) -> dict[str, dict[str, Any]]:
    """The medians of the rounds; ``ratio`` is the median of the rounds' own ratios (each
    round's two runs were taken back to back), with their range in the note."""
    wall = [a / b for a, b in zip(runs["layer"], runs["raw"], strict=True)]
    cpu = [b / a for a, b in zip(runs["layer_cpu"], runs["raw_cpu"], strict=True)]
    out = {}
    for name, ratios, project, raw, unit in (
        ("embed_throughput", wall, runs["layer"], runs["raw"], f"docs/s ({model})"),
        ("embed_cpu", cpu, runs["layer_cpu"], runs["raw_cpu"],
         f"CPU ms per 1,000 docs, ratio raw/layer ({model})"),
    ):  # fmt: skip
        f = figure(median(project), median(raw), unit, ">= 0.9x",
                   note=f"{len(ratios)} rounds, ratios {min(ratios):.2f}-{max(ratios):.2f}")  # fmt: skip
        f["ratio"] = median(ratios)
        out[name] = f
        how = "layer/raw docs/s" if name == "embed_throughput" else "raw/layer CPU per doc"
        print(f"# semantic: {name} per round ({how}): "
              + " ".join(f"{x:.2f}" for x in ratios), flush=True)  # fmt: skip
    return out


async def run(quick: bool) -> dict[str, dict[str, Any]]:
    sets = load_eval_sets()
    size = 20_000 if quick else 100_000
    figures: dict[str, dict[str, Any]] = {}
    async with _layer() as data:
        quality = await _quality(data, {**tuning_sets(), **sets})
        for (set_name, name, label), m in quality.items():
            kind = "tuning" if set_name.startswith("tuning") else "quality"
            print(f"semantic {kind} {set_name} [{name}] {label}: recall@10={m['recall@10']:.3f} "
                  f"nDCG@10={m['nDCG@10']:.3f} (60 queries)", flush=True)  # fmt: skip
        for set_name in sets:
            for _, name, hybrid in [k for k in quality if k[0] == set_name]:
                if not hybrid.startswith("hybrid"):
                    continue
                short = hybrid[len("hybrid ") :]
                legs = {k: quality[(set_name, name, k)]["nDCG@10"]
                        for k in ("text", f"vector {short}")}  # fmt: skip
                best = max(legs, key=legs.__getitem__)
                f = figure(quality[(set_name, name, hybrid)]["nDCG@10"], legs[best],
                           f"nDCG@10 vs {best}", ">= 1.0x")  # fmt: skip
                key = f"hybrid_ndcg_vs_best_leg_{set_name}_{short.strip('()')}"
                if name == (ANALYZER or "standard"):
                    figures[key] = f
                else:  # the other analyzer's: beside the figures, not a goal of this setup
                    print(f"# semantic: [{name} analyzer] {key}: hybrid={f['project']:.3f} "
                          f"{best}={f['raw']:.3f} ratio={f['ratio']:.3f}", flush=True)  # fmt: skip
        queries = [q for qs in sets.values() for q in qs]
        model = _models()[-1]
        started = time.perf_counter()
        store = await _load(data, "bench", model, size)
        loaded = time.perf_counter() - started
        await store.service.stop()  # type: ignore[attr-defined]  # its index stays in memory
        times = await _latency(store, queries, 20 if quick else 30)
        overhead = times.pop("overhead")
        print(f"# semantic: hybrid beyond its own slower leg: p50="
              f"{percentile(overhead, 0.5) * 1000:.2f}ms p99={percentile(overhead, 0.99) * 1000:.2f}ms "
              f"({len(overhead)} searches)", flush=True)  # fmt: skip
        slower = max(("text", "vector"), key=lambda m: percentile(times[m], 0.5))
        concurrent, serial = await _concurrent(store, queries, 32 if quick else 64)
        load = os.getloadavg()
        runs = await _embedding(store, 5000 if quick else 20_000, 6 if quick else 10)
        print("# semantic: embedding rounds, load average before/after: "
              f"{load[0]:.1f} / {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    note = f"{size:,} documents, {model.name}, loaded and projected in {loaded:.0f}s; p50 " + \
        ", ".join(f"{m}={percentile(times[m], 0.5) * 1000:.1f}ms" for m in times)  # fmt: skip
    print(f"# semantic: {note}", flush=True)
    return {
        **figures,
        "hybrid_p50": _latency_figure(times, slower, 0.5, note),
        "hybrid_p99": _latency_figure(times, slower, 0.99, note),
        **_embedding_figures(runs, model.name),
        "concurrent_hybrid": figure(concurrent, serial, "searches/s, 64 concurrent vs serial", "-"),
    }
