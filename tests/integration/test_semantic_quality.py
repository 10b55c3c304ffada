"""Retrieval quality through the real stores: on the labelled sets kept in the repository
(their 3,000-document corpus), hybrid search with the WordLlama model reaches the better of
its two legs on nDCG@10 with the English analyzer (the bench's and the demo's setup), and
within 1% of it with the standard one, where the vector leg must take over on the inflected
queries (the bench prints the figures; this keeps the fusion from sliding back to plain RRF,
which landed far below the vector leg there). The legs' per-query weights were chosen on the
tuning sets (other seeds), never on these."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from satellites_es.config import DataLayerConfig
from satellites_es.demo.corpus import sample_corpus
from satellites_es.facade import DataLayer
from satellites_es.semantic import SemanticSchema, SemanticStore, WordLlamaEmbedder
from satellites_es.semantic.evaluation import EvalQuery, document_fields, eval_sets, ndcg_at
from tests.integration.semantic_support import env_without_bus


@pytest.fixture(params=["english", None], ids=["english", "standard"])
async def corpus(
    config_env: dict[str, str], es_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[SemanticStore]:
    env = env_without_bus({**config_env, "SATELLITES_ELASTICSEARCH_URL": es_url,
                           "SATELLITES_ELASTICSEARCH_ENABLED": "true"})  # fmt: skip
    async with DataLayer(DataLayerConfig.from_env(env)) as data:
        schema = SemanticSchema("eval", text_fields=("title", "body"), metadata_fields=("topic",),
                                embedders=(WordLlamaEmbedder(),),
                                text_analyzer=request.param)  # fmt: skip
        store = SemanticStore(data, schema)
        service = store.serve(poll_interval=0.1)
        service.projections = [schema.text, schema.vectors]
        await service.start()
        changes = store.changeset()
        for d in sample_corpus(documents=3000)[1]:
            changes.put_document(d.id, document_fields(d))
        committed = await changes.commit()
        assert committed.position is not None
        await data.wait_for(committed.position, timeout=300)
        yield store
        await service.stop()


async def _ndcg(store: SemanticStore, queries: list[EvalQuery], **options: object) -> float:
    total = 0.0
    for q in queries:
        hits = await store.search(q.query, 10, **options)  # type: ignore[arg-type]
        total += ndcg_at([h.id for h in hits], q)
    return total / len(queries)


# ~400 searches against the Elasticsearch emulator (BM25 in Python): a minute or two
@pytest.mark.timeout(600)
async def test_hybrid_reaches_the_better_leg_on_the_kept_sets(corpus: SemanticStore) -> None:
    stemmed = corpus.schema.text_analyzer == "english"
    for name, queries in eval_sets().items():  # = bench/data/semantic_eval.json
        text = await _ndcg(corpus, queries, mode="text")
        vector = await _ndcg(corpus, queries, mode="vector")
        hybrid = await _ndcg(corpus, queries)
        # measured (BENCHMARKS.md): english exact 0.958 vs text 0.942, inflected 0.972 vs text
        # 0.946; standard exact 0.966 vs text 0.947, inflected 0.783 vs vector 0.787, where 1%
        # below the better leg is within what 60 queries can tell apart
        floor = 1.0 if stemmed else 0.99
        assert hybrid >= floor * max(text, vector), (name, text, vector, hybrid)
        if name == "inflected" and not stemmed:
            plain = await _ndcg(corpus, queries, confidence=0.0)
            assert vector > 2 * text and hybrid > plain + 0.15, (text, vector, plain, hybrid)
        if name == "inflected" and stemmed:  # the analyzer finds queues in queue
            assert text > 0.9, text
