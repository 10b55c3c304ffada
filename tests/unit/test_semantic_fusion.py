"""Reciprocal rank fusion of the text and vector legs, weighted per query by each leg's
commitment, and the text leg's query."""

from __future__ import annotations

import pytest

from satellites_es.errors import ConfigurationError
from satellites_es.semantic.hybrid import (
    LEXICAL_WEIGHT,
    RRF_K,
    TextHit,
    check_confidence,
    check_weights,
    commitment,
    fuse,
    leg_weights,
    text_query,
)
from satellites_es.semantic.schema import SNIPPET
from satellites_es.vectors import VectorMatch


def t(doc: str, score: float) -> TextHit:
    return TextHit(doc, score, {"topic": "text"}, f"<em>{doc}</em>")


def v(doc: str, score: float) -> VectorMatch:
    return VectorMatch(doc, score, {"topic": "vec", SNIPPET: f"stored {doc}"})


def test_a_document_both_legs_rank_high_wins_and_carries_both_ranks() -> None:
    hits = fuse([t("a", 9), t("b", 8), t("c", 7)], [v("b", 0.9), v("c", 0.8), v("d", 0.7)], k=4)
    assert [h.id for h in hits] == ["b", "c", "a", "d"]
    b = hits[0]
    assert (b.text_rank, b.vector_rank) == (2, 1)
    assert b.score == pytest.approx(1 / (RRF_K + 2) + 1 / (RRF_K + 1))
    assert b.metadata == {"topic": "text"} and b.snippet == "<em>b</em>"  # the text leg's
    d = hits[3]
    assert (d.text_rank, d.vector_rank) == (None, 3)
    assert d.metadata == {"topic": "vec"} and d.snippet == "stored d"  # snippet out of metadata


def test_weights_tilt_the_fusion_and_a_zero_weight_leg_only_breaks_no_ties() -> None:
    text, vector = [t("a", 2), t("b", 1)], [v("b", 0.9), v("a", 0.1)]
    assert [h.id for h in fuse(text, vector, 2, (1.0, 0.5))] == ["a", "b"]
    assert [h.id for h in fuse(text, vector, 2, (0.5, 1.0))] == ["b", "a"]
    assert [h.id for h in fuse(text, [], 2, (1.0, 1.0))] == ["a", "b"]


def test_tied_scores_share_a_rank_so_the_other_leg_decides_between_them() -> None:
    hits = fuse([t("a", 5.0), t("b", 5.0), t("c", 1.0)], [v("b", 0.9)], k=3)
    assert [h.id for h in hits] == ["b", "a", "c"]
    assert [h.text_rank for h in hits] == [1, 1, 3]


def test_a_zero_weight_vector_leg_keeps_the_text_order_orders_its_ties_and_fills_in() -> None:
    # what a hybrid search does with a lexical embedder (LEXICAL_WEIGHT)
    text = [t("a", 9.0), t("b", 5.0), t("c", 5.0), t("d", 1.0)]
    vector = [v("c", 0.9), v("e", 0.8), v("d", 0.7), v("a", 0.1)]
    hits = fuse(text, vector, k=6, weights=(1.0, LEXICAL_WEIGHT))
    # c is tied with b in BM25 and the vector leg ranks it first; d stays below them; e follows
    assert [h.id for h in hits] == ["a", "c", "b", "d", "e"]
    assert hits[-1].score == 0.0 and hits[-1].vector_rank == 2


def test_k_limits_the_fused_list() -> None:
    assert len(fuse([t(str(i), 10 - i) for i in range(10)], [], k=3)) == 3


@pytest.mark.parametrize("weights", [(0.0, 0.0), (-1.0, 1.0), (1.0, -0.1)])
def test_weights_must_be_usable(weights: tuple[float, float]) -> None:
    with pytest.raises(ConfigurationError, match="weights"):
        check_weights(weights)


def test_commitment_is_the_spread_of_a_legs_scores_over_their_mean() -> None:
    assert commitment([3.0, 1.0]) == pytest.approx(0.5)
    assert commitment([2.0, 2.0, 2.0]) == 0.0  # flat: committed to nothing
    assert commitment([0.1, -0.3]) == 0.0  # not even similar on average
    assert commitment([5.0]) is None and commitment([]) is None


# BM25 matching one common word of the query in every hit: flat scores
FLAT = [t(f"f{i}", 4.4 - 0.01 * i) for i in range(10)]
# a vector leg whose best hits stand out
PEAKED = [v(f"p{i}", 0.9 - 0.08 * i) for i in range(10)]


def test_the_leg_that_commits_to_its_hits_outweighs_a_flat_one() -> None:
    w_text, w_vector = leg_weights([h.score for h in FLAT], [h.score for h in PEAKED], (1, 1), 6)
    assert w_vector > 100 * w_text and w_text + w_vector == pytest.approx(2.0)
    hits = fuse(FLAT, PEAKED, k=10, confidence=6)
    assert [h.id for h in hits] == [f"p{i}" for i in range(10)]
    plain = fuse(FLAT, PEAKED, k=10)  # plain RRF interleaves the legs
    assert {h.id for h in plain} == {f"f{i}" for i in range(5)} | {f"p{i}" for i in range(5)}


def test_the_weights_fall_back_to_the_static_ones_where_a_spread_means_nothing() -> None:
    flat, peaked = [h.score for h in FLAT], [h.score for h in PEAKED]
    assert leg_weights(flat, peaked, (1.0, 0.5), 0) == (1.0, 0.5)
    assert leg_weights(flat, [0.9], (1.0, 0.5), 6) == (1.0, 0.5)  # one vector hit
    assert leg_weights([1.0, 1.0], [0.5, 0.5], (1.0, 0.5), 6) == (1.0, 0.5)  # neither commits
    # a wild spread does not overflow: the committed leg takes (nearly) all the weight
    assert leg_weights([1.0, -0.999999], peaked, (1.0, 1.0), 50) == pytest.approx((2.0, 0.0))
    # the static weights still tilt the per-query ones
    tilted = leg_weights(flat, peaked, (1.0, 0.5), 1)
    assert tilted[1] / tilted[0] == pytest.approx(0.5 * commitment(peaked) / commitment(flat))  # type: ignore[operator]


@pytest.mark.parametrize("confidence", [-1.0, float("nan"), float("inf")])
def test_the_confidence_must_be_a_finite_number_at_least_0(confidence: float) -> None:
    with pytest.raises(ConfigurationError, match="confidence"):
        check_confidence(confidence)


def test_the_text_query_filters_metadata_with_terms() -> None:
    plain = text_query("q", ("title", "body"), None)
    assert plain == {"multi_match": {"query": "q", "fields": ["title", "body"]}}
    filtered = text_query("q", ("title",), {"topic": "x", "year": 2024})
    assert filtered["bool"]["filter"] == [{"term": {"topic": "x"}}, {"term": {"year": 2024}}]
