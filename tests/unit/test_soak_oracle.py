"""The soak's verdict (``bench/soak/oracle.py``) on hand-made evidence: a clean run passes, and
each kind of damage (a lost event, a duplicated effect, a mismatched value, an out-of-order
delivery, a poison event parked twice, not parked, parked by the wrong consumer or applied to a
sink) fails the run and is named. No services."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from bench.soak.oracle import (
    BusCounts,
    Evidence,
    Injected,
    ParkedRow,
    Verdict,
    judge,
)

from satellites_es.events import DataEvent
from satellites_es.projections import Delete, Projection, Upsert

CLEAN_LINE = "lost=0 duplicated_effects=0 mismatched=0 parked=2/2"


def entity_change(event: DataEvent) -> Upsert | Delete:
    if event.type == "entity.deleted":
        return Delete(event.key)
    return Upsert(event.key, dict(event.payload))


def embedding_change(event: DataEvent) -> Upsert:
    payload = event.payload
    return Upsert(event.key, {"vector": payload["vector"], "metadata": {"title": payload["title"]}})


PROJECTIONS = {
    "entities": Projection(name="entities", version=1, sink="redis",
                           event_types=("entity.upserted", "entity.deleted"),
                           handler=entity_change),
    "embeddings": Projection(name="embeddings", version=1, sink="faiss",
                             event_types=("embedding.upserted",), handler=embedding_change),
}  # fmt: skip
DIMENSION_POISON = Injected("dimension", ("projection", "embeddings", 1), "e5", "poison-dim-0")
ROUTING_POISON = Injected("routing_key", ("relay", "default", 0), "e6", "poison-rk-1")


def event(position: int, type_: str, key: str, **payload: Any) -> DataEvent:
    resource = type_.split(".")[0] + "s"
    return DataEvent(type=type_, resource=resource, key=key, payload=payload, source="test",
                     id=f"e{position}", position=position)  # fmt: skip


def parked(consumer: tuple[Any, str, int], position: int, key: str, **row: Any) -> ParkedRow:
    fields = {"error_type": "ProjectionError", "status": "parked", **row}
    return ParkedRow(*consumer, position=position, key=key, **fields)


CLEAN = Evidence(
    events=[
        event(1, "entity.upserted", "k1", name="a"),
        event(2, "entity.upserted", "k2", name="b"),
        event(3, "entity.upserted", "k1", name="a2"),
        event(4, "embedding.upserted", "v1", vector=[3.0, 4.0], title="t"),
        event(5, "embedding.upserted", "poison-dim-0", vector=[1.0], title="p"),
        event(6, "x" * 300, "poison-rk-1", name="p"),
        event(7, "entity.deleted", "k2"),
    ],
    injected=[DIMENSION_POISON, ROUTING_POISON],
    counts=BusCounts(distinct=6, counter=6, deliveries=9, order_violations=0),
    delivered=frozenset({1, 2, 3, 4, 5, 7}),  # 6 can never be routed: the relay parks it
    sinks={
        "entities": {"k1": {"name": "a2"}, "k2": None},  # k2: a tombstone
        "embeddings": {"v1": {"vector": [0.6, 0.8], "metadata": {"title": "t"}}},
    },
    snapshot_position=7,
    parked=[
        parked(DIMENSION_POISON.consumer, 5, "poison-dim-0"),
        parked(ROUTING_POISON.consumer, 6, "poison-rk-1", error_type="UndeliverableError"),
    ],
    audits={"entities": {"missing": 0, "extra": 0, "stale": 0}, "embeddings": {"missing": 0}},
)


def with_sink(name: str, **keys: Any) -> Evidence:
    return replace(CLEAN, sinks={**CLEAN.sinks, name: {**CLEAN.sinks[name], **keys}})


def failed(evidence: Evidence) -> Verdict:
    verdict = judge(evidence, PROJECTIONS)
    assert not verdict.ok
    assert verdict.last_line() != CLEAN_LINE
    return verdict


def test_a_clean_run_passes_with_the_clean_last_line() -> None:
    verdict = judge(CLEAN, PROJECTIONS)

    assert verdict.ok
    assert verdict.last_line() == CLEAN_LINE
    assert not verdict.examples and not verdict.failures
    assert str(verdict.parked) == (
        "embeddings=1/1 relay=1/1 unexpected=0 missing=0 not_in_log=0 "
        "errors={'dimension:ProjectionError': 1, 'routing_key:UndeliverableError': 1}"
    )
    assert verdict.expected_keys == {"entities": 2, "embeddings": 1}


def test_a_position_never_delivered_is_lost() -> None:
    evidence = replace(CLEAN, delivered=CLEAN.delivered - {3},
                       counts=replace(CLEAN.counts, distinct=5, counter=5))  # fmt: skip

    verdict = failed(evidence)

    assert verdict.lost == 1
    assert verdict.details["bus"]["undelivered"] == 1
    assert verdict.last_line().startswith("lost=1 duplicated_effects=0 mismatched=0 parked=2/2")


def test_an_unroutable_event_that_was_delivered_all_the_same_is_counted() -> None:
    verdict = failed(replace(CLEAN, delivered=CLEAN.delivered | {6}))

    assert verdict.lost == 1
    assert verdict.details["bus"]["delivered_unroutable"] == 1


def test_a_key_missing_from_a_sink_is_lost_and_an_extra_one_too() -> None:
    evidence = replace(CLEAN, sinks={**CLEAN.sinks, "entities": {"k1": {"name": "a2"},
                                                                 "k9": {"name": "?"}}})  # fmt: skip

    verdict = failed(evidence)

    assert verdict.lost == 2
    assert verdict.details["entities"] == {"missing": 1, "extra": 1}
    assert "entities: missing: k2" in verdict.examples


@pytest.mark.parametrize(
    "older",
    [{"k1": {"name": "a"}}, {"k2": {"name": "b"}}],  # k2: a deleted key back to life
)
def test_an_older_state_in_a_sink_is_a_duplicated_effect(older: dict[str, Any]) -> None:
    verdict = failed(with_sink("entities", **older))

    assert (verdict.mismatched, verdict.duplicated_effects) == (1, 1)
    assert verdict.details["entities"]["older_state_won"] == 1
    assert verdict.last_line().startswith("lost=0 duplicated_effects=1 mismatched=1")


def test_a_position_counted_twice_by_the_subscriber_is_a_duplicated_effect() -> None:
    verdict = failed(replace(CLEAN, counts=replace(CLEAN.counts, counter=7)))

    assert (verdict.duplicated_effects, verdict.mismatched) == (1, 0)
    assert verdict.details["bus"]["counter_vs_distinct"] == 1


@pytest.mark.parametrize(
    ("sink", "key", "value"),
    [
        ("entities", "k1", {"name": "something else"}),
        ("embeddings", "v1", {"vector": [0.8, 0.6], "metadata": {"title": "t"}}),
        ("embeddings", "v1", {"vector": [0.6, 0.8], "metadata": {"title": "other"}}),
    ],
)
def test_a_value_that_differs_from_the_log_is_mismatched(
    sink: str, key: str, value: dict[str, Any]
) -> None:
    verdict = failed(with_sink(sink, **{key: value}))

    assert (verdict.mismatched, verdict.duplicated_effects, verdict.lost) == (1, 0, 0)
    assert verdict.details[sink]["differs"] == 1


def test_a_first_delivery_out_of_key_order_fails_the_run_and_is_named() -> None:
    verdict = failed(replace(CLEAN, counts=replace(CLEAN.counts, order_violations=1)))

    assert verdict.order_violations == 1
    assert verdict.details["bus"]["order_violations"] == 1
    assert verdict.last_line() == f"{CLEAN_LINE} order_violations=1"


def test_a_poison_event_parked_twice_is_not_counted_as_parked() -> None:
    twice = parked(("projection", "entities", 1), 5, "poison-dim-0")
    verdict = failed(replace(CLEAN, parked=[*CLEAN.parked, twice]))

    assert verdict.parked.problems == {"parked_twice": 1}
    assert (verdict.parked.parked, len(verdict.parked.unexpected)) == (1, 1)
    assert verdict.last_line().endswith("parked=1/2 parked_unexpected=1")


def test_a_poison_event_not_parked_is_missing() -> None:
    verdict = failed(replace(CLEAN, parked=CLEAN.parked[1:]))

    assert verdict.parked.problems == {"not_parked": 1}
    assert verdict.parked.missing == [
        "not_parked: dimension at 5 for ('projection', 'embeddings', 1): no row of its own"
    ]
    assert verdict.last_line() == "lost=0 duplicated_effects=0 mismatched=0 parked=1/2"


def test_a_poison_event_parked_by_the_wrong_consumer_is_missing_and_its_row_unexpected() -> None:
    wrong = parked(("projection", "documents", 1), 5, "poison-dim-0")
    verdict = failed(replace(CLEAN, parked=[wrong, CLEAN.parked[1]]))

    assert verdict.parked.problems == {"wrong_consumer": 1}
    assert (len(verdict.parked.missing), len(verdict.parked.unexpected)) == (1, 1)
    assert str(verdict.parked).startswith("embeddings=0/1 relay=1/1 unexpected=1 missing=1")


def test_a_parked_row_for_another_key_or_replayed_does_not_count() -> None:
    for row in (parked(DIMENSION_POISON.consumer, 5, "k1"),
                parked(DIMENSION_POISON.consumer, 5, "poison-dim-0", status="replayed")):  # fmt: skip
        verdict = failed(replace(CLEAN, parked=[row, CLEAN.parked[1]]))

        assert verdict.parked.problems == {"bad_row": 1}


def test_a_parked_event_that_is_no_poison_is_unexpected() -> None:
    stray = parked(("projection", "entities", 1), 2, "k2")
    verdict = failed(replace(CLEAN, parked=[*CLEAN.parked, stray]))

    assert verdict.parked.problems == {"not_poison": 1}
    assert verdict.last_line() == f"{CLEAN_LINE} parked_unexpected=1"


def test_a_poison_event_applied_to_a_sink_is_named() -> None:
    poisoned = {"vector": [1.0], "metadata": {"title": "p"}}
    verdict = failed(with_sink("embeddings", **{"poison-dim-0": poisoned}))

    assert verdict.poison_applied == 1
    assert verdict.details["embeddings"] == {"poison_applied": 1}
    assert verdict.last_line() == f"{CLEAN_LINE} poison_applied=1"


def test_a_poison_event_never_stored_is_not_expected_to_be_parked() -> None:
    lost_append = Injected("mapping", ("projection", "documents", 1), "never-stored", "poison-m")
    verdict = judge(replace(CLEAN, injected=[*CLEAN.injected, lost_append]), PROJECTIONS)

    assert verdict.ok
    assert verdict.parked.not_in_log == 1


def test_the_operators_audit_finding_drift_or_no_catch_up_fails_the_run() -> None:
    drift = {**CLEAN.audits, "entities": {"missing": 1, "extra": 0, "stale": 2}}

    assert failed(replace(CLEAN, audits=drift)).failures == ["audit_drift=entities:3"]
    assert failed(replace(CLEAN, caught_up=False)).failures == ["caught_up=False"]


def test_a_vector_snapshot_behind_the_log_is_named() -> None:
    verdict = judge(replace(CLEAN, snapshot_position=3), PROJECTIONS)

    assert verdict.details["embeddings"]["snapshot_behind"] == 1
