"""Poison events from the command line (issue 12), as an operator meets them: a rebuild stops on
one and names it, ``--on-poison park`` builds without it, ``parked list`` shows it, ``parked
retry`` with nothing running says so, a service running the fixed handler applies it, and
``parked discard`` says what it deletes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

import asyncpg

from satellites_es.config import DataLayerConfig
from satellites_es.events import DataEvent
from satellites_es.migrate import upgrade
from satellites_es.parking import ParkedEvent, ParkedEvents
from satellites_es.testing.services import free_port

from .conftest import CLI, run_cli
from .test_service_cli import _wait_http
from .test_service_faults import _append

FIXED = '''
    """The demo's projections with the documents handler fixed: a missing title is allowed."""
    import dataclasses

    from satellites_es.demo.projections import PROJECTIONS as DEMO
    from satellites_es.demo.projections import document_change as to_change
    from satellites_es.projections import Upsert


    def fixed(event):
        if event.type == "document.upserted" and "title" not in event.payload:
            return Upsert(event.key, {"title": "(untitled)", "body": event.payload["body"]})
        return to_change(event)


    PROJECTIONS = {**DEMO, "documents": dataclasses.replace(DEMO["documents"], handler=fixed)}
'''


def doc(key: str, **payload: str) -> DataEvent:
    return DataEvent(type="document.upserted", resource="documents", key=key,
                     payload=payload, source="test")  # fmt: skip


def test_poison_events_from_the_command_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    config = DataLayerConfig.from_env(cli_env)
    asyncio.run(upgrade(config.postgres))
    good = [doc(f"d{i}", title=f"t{i}", body="b") for i in range(20)]
    asyncio.run(_append(config, [*good[:10], doc("untitled", body="no title"), *good[10:]]))

    stopped = run_cli(["rebuild", "documents"], cli_env)
    assert stopped.returncode == 1
    assert "position 11 (key 'untitled'" in stopped.stderr and "KeyError" in stopped.stderr
    assert "Traceback" not in stopped.stderr

    parked = run_cli(["rebuild", "documents", "--on-poison", "park"], cli_env)
    assert parked.returncode == 0, parked.stderr
    assert "1 event(s) parked" in parked.stdout
    listed = run_cli(["parked", "list"], cli_env)
    assert listed.returncode == 0 and "projection documents" in listed.stdout
    assert "untitled" in listed.stdout and "KeyError" in listed.stdout

    waited = run_cli(["parked", "retry", "documents", "--wait", "1"], cli_env)
    assert waited.returncode == 1 and "no consumer applied it yet" in waited.stderr

    # the fix deployed: a service with the fixed handler applies the marked event
    (tmp_path / "fixedprojections.py").write_text(textwrap.dedent(FIXED))
    fixed_env = {**cli_env, "SATELLITES_PROJECTIONS_MODULE": "fixedprojections",
                 "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("SATELLITES_")}
    proc = subprocess.Popen([*CLI, "run", "-p", "documents", "--http-port", str(port)],
                            env={**full, **fixed_env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
        # the retry asked for above is still pending: the running service applies it
        asyncio.run(_until_parked(config, lambda rows: rows == []))
        assert "0 parked event(s)" in run_cli(["parked", "list"], cli_env).stdout

        # one more poison event, which the fixed handler cannot take either (no body)
        asyncio.run(_append(config, [doc("empty")]))
        asyncio.run(_until_parked(config, lambda rows: [r.key for r in rows] == ["empty"]))
        again = run_cli(["parked", "retry", "documents", "--wait", "30"], cli_env)
        assert again.returncode == 1 and "failed again: KeyError" in again.stderr, again.stderr
        assert "0 of 1 parked event(s) applied" in again.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    refused = run_cli(["parked", "discard", "documents"], cli_env)  # no TTY to say yes
    assert refused.returncode == 1 and "this discards 1 parked event(s)" in refused.stdout
    discarded = run_cli(["parked", "discard", "documents", "--yes"], cli_env)
    assert discarded.returncode == 0 and "discarded 1 parked event(s)" in discarded.stdout
    assert "0 parked event(s)" in run_cli(["parked", "list"], cli_env).stdout
    assert run_cli(["parked", "discard", "documents", "--yes"], cli_env).returncode == 1


async def _until_parked(config: DataLayerConfig, done: Callable[[list[ParkedEvent]], bool]) -> None:
    pool = await asyncpg.create_pool(config.postgres.dsn, min_size=1, max_size=1)
    try:
        parked = ParkedEvents(pool, config.postgres.schema)
        async with asyncio.timeout(30):
            while not done(await parked.entries("projection", "documents")):
                await asyncio.sleep(0.2)
    finally:
        await pool.close()
