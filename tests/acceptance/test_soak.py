"""The soak (``python -m bench.soak``) in short: 90 seconds of steady appends under random
faults (SIGKILLed relays and projectors, terminated Postgres sessions, a RabbitMQ restart, Redis
and Elasticsearch cut at a TCP proxy for 5-60 s) with poison events of every kind among them,
then every sink compared with the log key by key, every position checked as delivered by the
bus, and every poison event checked as parked once by the consumer it should hit. And its
self-check: a short run with ``--sabotage`` must fail with the verdict the damage calls for."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FINAL = re.compile(r"lost=0 duplicated_effects=0 mismatched=0 parked=(\d+)/(\d+)")
SABOTAGED = re.compile(r"lost=2 duplicated_effects=1 mismatched=1 parked=(\d+)/(\d+)(?: (.*))?")
POISON_KINDS = ("dimension", "handler_documents", "handler_embeddings", "mapping", "routing_key")


def run_soak(*args: str, timeout: float) -> tuple[int, list[str], str]:
    """Run the soak with ``args``; its exit code, stdout lines, and the tail of the output to
    show when an assertion fails. A soak that overruns is SIGTERMed first (it cleans up its
    children, RabbitMQ and namespace), killed only if that does not end it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SATELLITES_")}
    for var in ("SATELLITES_ES_URL", "SATELLITES_POSTGRES_URL", "SATELLITES_REDIS_URL",
                "SATELLITES_RABBITMQ_URL"):  # fmt: skip
        if os.environ.get(var):
            env[var] = os.environ[var]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.soak", *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
        raise AssertionError(
            f"the soak did not finish in time:\n{out[-3000:]}\n{err[-3000:]}"
        ) from None
    finally:
        if proc.poll() is None:  # e.g. pytest-timeout fired: let the soak clean up first
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    lines = out.strip().splitlines()
    return proc.returncode, lines, "\n".join(lines[-15:]) + "\n--- stderr ---\n" + err[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_short_soak_loses_nothing_duplicates_nothing_and_matches_the_log() -> None:
    code, lines, report = run_soak(
        "--seconds", "90", "--rate", "150", "--keys", "200", "--seed", "8",
        "--catchup-timeout", "180", timeout=780,
    )  # fmt: skip
    assert code == 0, report
    final = FINAL.fullmatch(lines[-1]) if lines else None
    assert final is not None and final[1] == final[2] and int(final[2]) >= len(POISON_KINDS), report
    faults = next(line for line in lines if line.startswith("faults: "))
    assert "rabbit_restarts" in faults and "kill" in faults and "pg_terminate" in faults, report
    cuts = next(line for line in lines if line.startswith("sink cuts: "))
    assert "'redis'" in cuts and "'elasticsearch'" in cuts, report
    poison = next(line for line in lines if line.startswith("poison: "))
    assert all(f"'{kind}'" in poison for kind in POISON_KINDS), report
    parked = next(line for line in lines if line.startswith("parked: "))
    assert all(f"{c}=" in parked for c in ("documents", "embeddings", "relay")), report


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sabotaged_soak_fails_with_the_verdict_its_damage_calls_for() -> None:
    """``--sabotage`` gives one entity its older state back, deletes another, drops one
    delivered position from the audit record and deletes one parked row, in the stores
    themselves: the run must fail, naming exactly that."""
    code, lines, report = run_soak(
        "--seconds", "25", "--rate", "100", "--keys", "50", "--seed", "18",
        "--poison-min", "1", "--poison-max", "3", "--catchup-timeout", "120", "--sabotage",
        timeout=480,
    )  # fmt: skip
    assert code == 1, report
    final = SABOTAGED.fullmatch(lines[-1]) if lines else None
    assert final is not None, report
    parked, injected, others = int(final[1]), int(final[2]), final[3] or ""
    assert injected >= 1 and parked == injected - 1, report
    assert "audit_drift=" in others and "entities:" in others, report  # the operator's audit too
    assert "caught_up" not in others, report
    problems = [line for line in lines if line.startswith("  problem: ")]
    for named in ("entities: older_state_won", "entities: missing", "bus: undelivered",
                  "parked: not_parked"):  # fmt: skip
        assert any(named in line for line in problems), report
