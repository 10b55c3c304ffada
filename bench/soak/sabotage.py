"""``--sabotage``: damage the results on purpose before they are read, to show the verdict is
no rubber stamp. The damage goes into the stores themselves (Redis, the audit record,
``parked_events``), so the whole path that reads them is checked too:

* one entity gets its older state back: ``mismatched=1 duplicated_effects=1``;
* another entity loses its key, and one delivered position its audit record: ``lost=2``;
* the first parked row is deleted: ``parked=M-1/M``.

The operator's audit then finds the damaged entities too (``audit_drift=entities:2`` or more on
the last line), and the run fails."""

from __future__ import annotations

import json
from collections.abc import Mapping

import asyncpg
import redis.asyncio as aioredis

from bench.soak.auditor import AuditRecord
from bench.soak.namespace import Namespace
from bench.soak.oracle import KeyState

EXPECTED = "lost=2 duplicated_effects=1 mismatched=1 parked=M-1/M"


async def sabotage(
    ns: Namespace, redis: aioredis.Redis, audit: AuditRecord, entities: Mapping[str, KeyState]
) -> None:
    """``entities``: the log folded for the ``entities`` projection (Redis, version 1)."""
    older = [k for k, st in entities.items() if st.document is not None and st.history
             and st.history[-1] is not None]  # fmt: skip
    others = [k for k in entities if k not in older[:1]]
    delivered = sorted(await audit.positions())
    if not older or not others or not delivered:
        raise RuntimeError("--sabotage needs a longer run (no entity with an older state)")
    state = json.dumps(entities[older[0]].history[-1], separators=(",", ":"))
    await redis.hset(f"{ns.redis_prefix}entities_v1:{older[0]}", "d", state)
    await redis.delete(f"{ns.redis_prefix}entities_v1:{others[0]}")
    await redis.srem(audit.keys["positions"], delivered[len(delivered) // 2])
    conn = await asyncpg.connect(ns.postgres_url)
    try:
        await conn.execute(f'DELETE FROM "{ns.schema}".parked_events WHERE position = '
                           f'(SELECT min(position) FROM "{ns.schema}".parked_events)')  # fmt: skip
    finally:
        await conn.close()
