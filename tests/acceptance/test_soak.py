"""The soak (``python -m bench.soak``) in short: 90 seconds of steady appends under random faults
(SIGKILLed relays and projectors, terminated Postgres sessions, a RabbitMQ restart, Redis and
Elasticsearch cut at a TCP proxy for 5-60 s) with poison events of every kind among them, then
every sink compared with the log key by key, every position checked as delivered by the bus, and
every poison event checked as parked once by the consumer it should hit."""

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
POISON_KINDS = ("dimension", "handler_documents", "handler_embeddings", "mapping", "routing_key")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_short_soak_loses_nothing_duplicates_nothing_and_matches_the_log() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SATELLITES_")}
    if os.environ.get("SATELLITES_ES_URL"):
        env["SATELLITES_ES_URL"] = os.environ["SATELLITES_ES_URL"]
    for var in ("SATELLITES_POSTGRES_URL", "SATELLITES_REDIS_URL", "SATELLITES_RABBITMQ_URL"):
        if os.environ.get(var):
            env[var] = os.environ[var]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.soak", "--seconds", "90", "--rate", "150",
         "--keys", "200", "--seed", "8", "--catchup-timeout", "180"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=780)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the soak cleans up: children, RabbitMQ, namespace
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
    report = "\n".join(lines[-15:]) + "\n--- stderr ---\n" + err[-3000:]
    assert proc.returncode == 0, report
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
