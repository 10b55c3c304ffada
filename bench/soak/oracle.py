"""The soak's verdict, as pure functions over plain data (:class:`Evidence`): no service, no
clock, so the unit tests feed it hand-made inputs.

* expected = the log without its poison events, folded per key in position order through
  ``projection.change_for(event)``; the sinks' contents are compared with it key by key;
* ``lost`` = log positions never delivered to the audit subscriber (but the relay's poison
  events, which the bus can never carry) + sink keys missing or extra (poison keys left out);
* ``mismatched`` = keys present on both sides whose document differs; ``duplicated_effects`` =
  the mismatched keys that hold an *older* state of the key (a late or repeated write won) +
  audit counter increments beyond the distinct positions;
* ``parked=N/M``: of the M poison events in the log, N have their one row in ``parked_events``
  by the consumer they should hit; a row for anything else fails the run too;
* and, each failing the run and named after the counts on the last line when not clean: first
  deliveries out of per-key order, a poison key found in a sink, the operator's audit finding
  drift, the pipeline not caught up.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from satellites_es.events import DataEvent
from satellites_es.parking import ConsumerKind
from satellites_es.projections import Delete, Projection, Upsert

Document = Mapping[str, Any]
#: who parks an event: (kind, name, version) as in ``parked_events``
Consumer = tuple[ConsumerKind, str, int]


@dataclass(frozen=True)
class Injected:
    """A poison event as the soak recorded it before appending it."""

    kind: str
    consumer: Consumer  # the one that must park it
    event_id: str
    key: str


@dataclass(frozen=True)
class BusCounts:
    """The audit subscriber's counters (:mod:`bench.soak.auditor`)."""

    distinct: int  # distinct positions delivered
    counter: int  # bumped once per first delivery: above ``distinct``, one counted twice
    deliveries: int  # every delivery, redeliveries included
    order_violations: int  # first deliveries behind a later event of their key


@dataclass(frozen=True)
class ParkedRow:
    kind: ConsumerKind
    name: str
    version: int
    position: int
    key: str
    error_type: str
    status: str

    @property
    def consumer(self) -> Consumer:
        return (self.kind, self.name, self.version)


@dataclass(frozen=True)
class Evidence:
    """Everything the verdict looks at, read once everything caught up (or gave up)."""

    events: Sequence[DataEvent]  # the whole log, in position order
    injected: Sequence[Injected]
    counts: BusCounts
    delivered: frozenset[int]  # the positions the audit subscriber saw
    sinks: Mapping[str, Mapping[str, Document | None]]  # {projection: {key: document}}
    snapshot_position: int  # the position the FAISS snapshot holds
    parked: Sequence[ParkedRow]
    audits: Mapping[str, Mapping[str, int]]  # the operator's audit: {projection: drift counts}
    caught_up: bool = True


@dataclass
class KeyState:
    document: Document | None = None  # None: deleted (a tombstone)
    position: int = 0
    history: list[Document | None] = field(default_factory=list)  # older states


@dataclass
class ParkedVerdict:
    """The poison events against ``parked_events``: each must have exactly one row, by the
    consumer it should hit, and no other row may exist. Each problem is named in
    :attr:`problems`: ``not_parked``, ``wrong_consumer``, ``parked_twice``, ``bad_row`` (the
    right consumer's row, but for another key or no longer ``parked``), ``not_poison`` (a row
    for an event that is no poison)."""

    injected: int = 0  # poison events in the log (M)
    parked: int = 0  # of those, parked once by the consumer they should hit (N)
    per_consumer: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    not_in_log: int = 0  # injections abandoned before any append stored them
    unexpected: list[str] = field(default_factory=list)  # rows beyond each poison's one row
    missing: list[str] = field(default_factory=list)  # poison events without their one row
    problems: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # (poison kind, error type)

    @property
    def ok(self) -> bool:
        return self.parked == self.injected and not self.unexpected and not self.missing

    def __str__(self) -> str:
        consumers = " ".join(f"{name}={got}/{want}"
                             for name, (got, want) in sorted(self.per_consumer.items()))  # fmt: skip
        return (f"{consumers} unexpected={len(self.unexpected)} missing={len(self.missing)} "
                f"not_in_log={self.not_in_log} errors={dict(sorted(self.errors.items()))}")  # fmt: skip

    def judge(self, poison: Injected, position: int, rows: Sequence[ParkedRow]) -> None:
        """One poison event at ``position`` against the rows parked at that position: one
        problem named per poison event, and every row beyond its one row is unexpected."""
        tally = self.per_consumer[poison.consumer[1] if poison.consumer[0] == "projection"
                                  else "relay"]  # fmt: skip
        tally[1] += 1
        self.injected += 1
        right = [r for r in rows if r.consumer == poison.consumer]
        what = f"{poison.kind} at {position} for {poison.consumer}"
        extra = [r for r in rows if not right or r is not right[0]]
        self.unexpected += [f"{what}: {row}" for row in extra]
        problem = _parked_problem(poison, rows, right)
        if problem is None:
            tally[0] += 1
            self.parked += 1
            self.errors[f"{poison.kind}:{right[0].error_type}"] += 1
            return
        self.problems[problem] += 1
        self.missing.append(f"{problem}: {what}: {right[0] if right else 'no row of its own'}")

    def not_poison(self, row: ParkedRow) -> None:
        self.problems["not_poison"] += 1
        self.unexpected.append(f"not_poison: {row}")


def _parked_problem(
    poison: Injected, rows: Sequence[ParkedRow], right: Sequence[ParkedRow]
) -> str | None:
    if not rows:
        return "not_parked"
    if not right:
        return "wrong_consumer"
    if len(rows) > 1:
        return "parked_twice"
    if right[0].key != poison.key or right[0].status != "parked":
        return "bad_row"
    return None


@dataclass
class Verdict:
    lost: int = 0
    duplicated_effects: int = 0
    mismatched: int = 0
    poison_applied: int = 0  # poison keys found in a sink
    order_violations: int = 0
    parked: ParkedVerdict = field(default_factory=ParkedVerdict)
    audit_drift: dict[str, int] = field(default_factory=dict)  # the operator's audit, if unclean
    caught_up: bool = True
    expected_keys: dict[str, int] = field(default_factory=dict)
    details: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    examples: list[str] = field(default_factory=list)

    def note(self, where: str, what: str, example: str) -> None:
        self.details[where][what] += 1
        if len(self.examples) < 12:
            self.examples.append(f"{where}: {what}: {example}")

    @property
    def failures(self) -> list[str]:
        """The failed checks beyond the four figures every last line shows."""
        drift = ",".join(f"{name}:{n}" for name, n in sorted(self.audit_drift.items()))
        checks = [
            ("order_violations", self.order_violations, self.order_violations),
            ("poison_applied", self.poison_applied, self.poison_applied),
            ("parked_unexpected", len(self.parked.unexpected), len(self.parked.unexpected)),
            ("audit_drift", drift, bool(drift)),
            ("caught_up", self.caught_up, not self.caught_up),
        ]
        return [f"{name}={value}" for name, value, failed in checks if failed]

    @property
    def ok(self) -> bool:
        counts = (self.lost, self.duplicated_effects, self.mismatched)
        return not any(counts) and self.parked.ok and not self.failures

    def last_line(self) -> str:
        p = self.parked
        line = (f"lost={self.lost} duplicated_effects={self.duplicated_effects} "
                f"mismatched={self.mismatched} parked={p.parked}/{p.injected}")  # fmt: skip
        return " ".join([line, *self.failures])


def judge(evidence: Evidence, projections: Mapping[str, Projection]) -> Verdict:
    """The whole verdict; ``projections`` are the ones whose sinks :attr:`Evidence.sinks`
    holds (a ``faiss`` one is compared as vectors)."""
    verdict = Verdict(caught_up=evidence.caught_up, audit_drift=_drift(evidence.audits))
    positions = {e.id: e.position for e in evidence.events}
    poison_at = {q: i for i in evidence.injected if (q := positions.get(i.event_id)) is not None}
    check_bus(evidence, frozenset(q for q, i in poison_at.items() if i.consumer[0] == "relay"),
              verdict)  # fmt: skip
    expected = fold(evidence.events, projections, skip=frozenset(poison_at))
    verdict.expected_keys = {name: len(states) for name, states in expected.items()}
    poison_keys = frozenset(i.key for i in evidence.injected)
    for name, actual in evidence.sinks.items():
        vectors = projections[name].sink == "faiss"
        compare(name, expected[name], actual, verdict, vectors=vectors, poison_keys=poison_keys)
        if vectors:
            check_snapshot(name, expected[name], evidence.snapshot_position, verdict)
    verdict.parked = check_parked(evidence.injected, positions, evidence.parked)
    return verdict


def _drift(audits: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    return {name: sum(counts.values()) for name, counts in audits.items() if any(counts.values())}


def check_bus(evidence: Evidence, never_on_bus: frozenset[int], verdict: Verdict) -> None:
    """Every position delivered to the audit subscriber (but ``never_on_bus``, the events the
    relay must park), each counted once, each key's first deliveries in position order."""
    delivered, counts = evidence.delivered, evidence.counts
    positions = [e.position for e in evidence.events if e.position is not None]
    undelivered = [q for q in positions if q not in delivered and q not in never_on_bus]
    if delivered & never_on_bus:  # impossible: counted, not hidden
        verdict.lost += len(delivered & never_on_bus)
        verdict.note("bus", "delivered_unroutable", str(sorted(delivered & never_on_bus)))
    verdict.lost += len(undelivered)
    if undelivered:
        verdict.note("bus", "undelivered", f"{len(undelivered)}, e.g. {undelivered[:5]}")
    if counts.counter != counts.distinct:
        verdict.duplicated_effects += abs(counts.counter - counts.distinct)
        verdict.note("bus", "counter_vs_distinct",
                     f"counter={counts.counter} distinct={counts.distinct}")  # fmt: skip
    if counts.order_violations:
        verdict.order_violations = counts.order_violations
        verdict.note("bus", "order_violations", f"{counts.order_violations} first deliveries "
                     "behind a later event of their key")  # fmt: skip


def fold(
    events: Sequence[DataEvent], projections: Mapping[str, Projection],
    skip: frozenset[int] = frozenset(),
) -> dict[str, dict[str, KeyState]]:  # fmt: skip
    """The expected state of every projection: the log folded per key, without the events at
    the ``skip`` positions (the poison events, which must have no effect)."""
    expected: dict[str, dict[str, KeyState]] = {name: {} for name in projections}
    for event in events:  # position order
        if event.position in skip:
            continue
        for name, projection in projections.items():
            change = projection.change_for(event)
            if change is not None:
                _apply(expected[name].setdefault(change.key, KeyState()), change)
    return expected


def _apply(state: KeyState, change: Upsert | Delete) -> None:
    if state.position:
        state.history.append(state.document)
    state.document = change.document if isinstance(change, Upsert) else None
    state.position = change.position


def _same(a: Document | None, b: Document | None, vectors: bool) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if not vectors:
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    if a.get("metadata") != b.get("metadata"):
        return False
    va, vb = a.get("vector") or [], b.get("vector") or []
    return len(va) == len(vb) and all(abs(x - y) <= 1e-4 for x, y in zip(va, vb, strict=True))


def _unit(document: Document | None) -> Document | None:
    """An expected FAISS document as the index stores it: the vector at unit length."""
    if document is None:
        return None
    vector = list(document["vector"])
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return {"vector": [x / norm for x in vector], "metadata": dict(document["metadata"] or {})}


def compare(
    name: str, expected: Mapping[str, KeyState], actual: Mapping[str, Document | None],
    verdict: Verdict, *, vectors: bool = False, poison_keys: frozenset[str] = frozenset(),
) -> None:  # fmt: skip
    """Key by key; the poison keys (only poison events were appended on them) are left out
    and must simply be absent: one there means a poison event had an effect after all."""
    for key in sorted(poison_keys & actual.keys()):
        verdict.poison_applied += 1
        verdict.note(name, "poison_applied", f"{key}: {str(actual[key])[:80]}")
    actual = {k: v for k, v in actual.items() if k not in poison_keys}
    if vectors:  # FAISS keeps no tombstones: a deleted id is simply absent
        expected = {k: s for k, s in expected.items() if s.document is not None}
    for key, state in expected.items():
        if key in actual:
            _compare_key(name, key, state, actual[key], verdict, vectors)
        else:
            verdict.lost += 1
            verdict.note(name, "missing", key)
    for key in sorted(actual.keys() - expected.keys()):
        verdict.lost += 1
        verdict.note(name, "extra", key)


def _compare_key(
    name: str, key: str, state: KeyState, got: Document | None, verdict: Verdict, vectors: bool
) -> None:
    want = _unit(state.document) if vectors else state.document
    if _same(want, got, vectors):
        return
    verdict.mismatched += 1
    older = [_unit(h) if vectors else h for h in state.history]
    if any(_same(h, got, vectors) for h in older):
        verdict.duplicated_effects += 1
        verdict.note(name, "older_state_won", f"{key} (last position {state.position})")
    else:
        verdict.note(name, "differs", f"{key}: want {str(want)[:80]} got {str(got)[:80]}")


def check_snapshot(
    name: str, expected: Mapping[str, KeyState], snapshot_position: int, verdict: Verdict
) -> None:
    """The vector snapshot must hold the last event of its projection."""
    last = max((s.position for s in expected.values()), default=0)
    if snapshot_position < last:
        verdict.note(name, "snapshot_behind", f"the FAISS snapshot holds position "
                     f"{snapshot_position}, the last {name} event is at {last}")  # fmt: skip


def check_parked(
    injected: Sequence[Injected], positions: Mapping[str, int | None],
    rows: Sequence[ParkedRow],
) -> ParkedVerdict:  # fmt: skip
    """Each poison event in the log (``positions``: by event id) against ``parked_events``."""
    verdict = ParkedVerdict()
    at: dict[int, list[ParkedRow]] = defaultdict(list)
    for row in rows:
        at[row.position].append(row)
    expected: dict[int, Injected] = {}
    for poison in injected:
        position = positions.get(poison.event_id)
        if position is None:
            verdict.not_in_log += 1
        else:
            expected[position] = poison
    for position, poison in expected.items():
        verdict.judge(poison, position, at.get(position, []))
    for position in sorted(at.keys() - expected.keys()):
        for row in at[position]:
            verdict.not_poison(row)
    return verdict
