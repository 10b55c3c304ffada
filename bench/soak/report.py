"""The soak's printed lines: progress on the way (:func:`log`), then the report, one line per
part (``faults: ...``, ``bus: ...``, ``parked: ...``), the problems found, and last the verdict
(``lost=... duplicated_effects=... mismatched=... parked=N/M``, followed by any other failed
check). ``tests/acceptance/test_soak*.py`` parse these lines."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.soak.oracle import Evidence, Verdict
    from bench.soak.run import Soak


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


#: The report's lines in order, filled from :func:`_values` (``str.format``); the problem lines
#: go after ``parked:`` and ``sinks:`` (:func:`report_lines`).
PARTS = (
    "events={events} head={head} rate={rate:.1f}/s over {seconds:.0f}s (target {args.rate}/s) "
    "keys={args.keys} seed={seed}",
    "producers: appends_retried={p.append_errors} duplicates_absorbed={p.duplicates} "
    "abandoned={p.abandoned} transactional_appends={p.transactional} errors={errors}",
    "faults: {fault_counts} terminated_backends={f.terminated_backends} "
    "rabbit_downtime={f.rabbit_downtime:.1f}s fault_rate={fault_rate:.1f}/min "
    "not_injected={skipped}",
    "processes: restarts={s.restarts} unexpected_exits={s.crash_count} "
    "dead_relays_in_live_processes={s.dead_relays} graceful_stop_codes={s.graceful_exit_codes}",
    "bus: deliveries={c.deliveries} distinct={c.distinct} redelivered={redelivered} "
    "order_violations={c.order_violations}",
    "sink cuts: {cuts} seconds={cut_seconds} longest={cut_longest} health_said_down={seen_down}",
    "poison: injected={kinds} in_log={v.parked.injected} appends_retried={poison.append_errors} "
    "abandoned={poison.abandoned} applied_to_a_sink={v.poison_applied}",
    "parked: {v.parked}",
    "catch-up: {soak.catchup_seconds:.1f}s caught_up={progress.caught_up} relay_lag={relay_lag} "
    "faiss_snapshot_position={evidence.snapshot_position}",
    "sinks: keys={sizes} expected_keys={v.expected_keys}",
)


def _sorted(values: Mapping[str, float], digits: int | None = None) -> dict[str, float]:
    return {k: v if digits is None else round(v, digits) for k, v in sorted(values.items())}


def _values(soak: Soak, evidence: Evidence, verdict: Verdict) -> dict[str, Any]:
    positions = [e.position for e in evidence.events if e.position is not None]
    seconds, faults, cuts = soak.produce_seconds, soak.fault_stats, soak.cut_stats
    return {
        "soak": soak, "args": soak.args, "seed": soak.seed, "evidence": evidence, "v": verdict,
        "events": len(evidence.events), "head": positions[-1] if positions else 0,
        "seconds": seconds, "rate": len(evidence.events) / seconds if seconds else 0.0,
        "p": soak.producer_stats, "errors": dict(soak.producer_stats.errors_seen.most_common(4)),
        "f": faults, "fault_counts": _sorted(faults.counts), "skipped": dict(faults.skipped),
        "fault_rate": sum(faults.counts.values()) / max(seconds, 1) * 60,
        "s": soak.supervisor, "c": evidence.counts,
        "redelivered": evidence.counts.deliveries - evidence.counts.distinct,
        "cuts": _sorted(cuts.cuts), "cut_seconds": _sorted(cuts.seconds, 1),
        "cut_longest": _sorted(cuts.longest, 1), "seen_down": _sorted(cuts.seen_down),
        "poison": soak.poison_stats,
        "kinds": _sorted(Counter(i.kind for i in soak.poison_stats.injected)),
        "progress": soak.progress,
        "relay_lag": max(0, soak.progress.head - soak.progress.relay_cursor),
        "sizes": {name: len(keys) for name, keys in evidence.sinks.items()},
    }  # fmt: skip


def report_lines(soak: Soak, evidence: Evidence, verdict: Verdict) -> list[str]:
    """Every line of the report but the last (:meth:`Verdict.last_line`)."""
    values = _values(soak, evidence, verdict)
    lines = [part.format(**values) for part in PARTS]
    parked = verdict.parked
    lines[8:8] = [f"  problem: parked: {line[:300]}"
                  for line in (parked.missing + parked.unexpected)[:8]]  # fmt: skip
    lines += [f"  problem: {example}" for example in verdict.examples]
    lines.append(_audit(evidence))
    if not verdict.ok:
        lines += [f"  {child.name}: {len(child.crashes)} unexpected exit(s); last: "
                  f"{child.crashes[-1][:300]}" for child in soak.children if child.crashes]  # fmt: skip
    return lines


def _audit(evidence: Evidence) -> str:
    found = " ".join(f"{name}={counts if any(counts.values()) else 'clean'}"
                     for name, counts in evidence.audits.items())  # fmt: skip
    return f"audit (satellites-es audit): {found}"
