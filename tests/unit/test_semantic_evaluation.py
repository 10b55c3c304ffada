"""The labelled evaluation sets kept in the repository are what the generator makes, and the
metrics count what they say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from satellites_es.semantic.evaluation import (
    EvalQuery,
    eval_sets,
    ndcg_at,
    plural,
    recall_at,
    tuning_sets,
)

KEPT = Path(__file__).resolve().parents[2] / "bench" / "data" / "semantic_eval.json"


def test_the_kept_sets_are_what_the_generator_makes() -> None:
    kept = json.loads(KEPT.read_text())["sets"]
    made = eval_sets()
    assert set(kept) == set(made) == {"exact", "inflected"}
    for name, queries in made.items():
        assert [EvalQuery.from_json(q) for q in kept[name]] == queries
        assert len(queries) == 60
        assert all(sum(g == 2 for g in q.grades.values()) >= 3 for q in queries)
    assert made["inflected"][0].query.split()[1].endswith("s")


def test_the_tuning_sets_share_no_query_with_the_kept_ones() -> None:
    kept = {q.query for qs in eval_sets().values() for q in qs}
    tuning = tuning_sets()
    assert [len(qs) for qs in tuning.values()] == [60] * 4
    assert not kept & {q.query for qs in tuning.values() for q in qs}
    assert sum(name.startswith("tuning-inflected") for name in tuning) == 2


def test_recall_is_capped_at_k_and_ndcg_is_one_for_the_ideal_ranking() -> None:
    q = EvalQuery("q", "t", {"a": 2, "b": 2, "c": 1})
    assert recall_at(["a", "x", "b"], q, k=10) == 1.0
    assert recall_at(["a"], q, k=1) == 1.0  # one relevant in a top 1 is all it can hold
    assert recall_at(["x", "c"], q, k=10) == 0.0  # grade 1 is not counted as found
    assert ndcg_at(["a", "b", "c"], q) == pytest.approx(1.0)
    assert 0 < ndcg_at(["c", "x", "a"], q) < ndcg_at(["a", "c"], q) < 1


@pytest.mark.parametrize(
    ("word", "expected"),
    [("queue", "queues"), ("index", "indexes"), ("latency", "latencies"), ("key", "keys")],
)
def test_plural(word: str, expected: str) -> None:
    assert plural(word) == expected
