"""The soak's bus auditor, a process of its own (so the soak can SIGKILL it too), and the
soak's reader of what it recorded.

``python -m bench.soak.auditor`` with the soak's ``SATELLITES_*`` variables subscribes to every
event on the RabbitMQ bus in the consumer group ``soak-audit`` and, for each delivery, runs one
Lua call on Redis (atomic):

* ``deliveries`` += 1 (every delivery, redeliveries included);
* ``SADD positions <position>``; only when that was new: ``counter`` += 1 (a non-idempotent
  effect guarded by an idempotent one: ``counter`` > ``SCARD positions`` would mean a position
  counted twice), and if the position is lower than the highest already seen for its
  ``(resource, key)``, ``order_violations`` += 1 (a first delivery overtaken by a later event of
  its key: per-key order broken).

All keys live under the soak's Redis key prefix. SIGTERM stops it gracefully.
"""

from __future__ import annotations

import asyncio
import signal

import redis.asyncio as aioredis

from bench.soak.namespace import AUDIT_GROUP as GROUP
from bench.soak.namespace import Namespace
from bench.soak.oracle import BusCounts
from satellites_es.bus.rabbitmq import RabbitMQEventBus
from satellites_es.config import DataLayerConfig
from satellites_es.events import DataEvent

AUDIT_LUA = """
redis.call('INCR', KEYS[3])
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
  redis.call('INCR', KEYS[2])
  local last = tonumber(redis.call('HGET', KEYS[4], ARGV[2]) or '0')
  if tonumber(ARGV[1]) < last then
    redis.call('INCR', KEYS[5])
  else
    redis.call('HSET', KEYS[4], ARGV[2], ARGV[1])
  end
  return 1
end
return 0
"""
NAMES = ("positions", "counter", "deliveries", "last_by_key", "order_violations")


def audit_keys(prefix: str) -> dict[str, str]:
    return {name: f"{prefix}audit:{name}" for name in NAMES}


class AuditHandler:
    subscriber_name = GROUP

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        keys = audit_keys(prefix)
        self._keys = [keys[n] for n in NAMES]
        self._script = redis.register_script(AUDIT_LUA)

    async def __call__(self, event: DataEvent) -> None:
        if event.position is None:
            return
        stream = f"{event.resource}\x1f{event.key}"
        await self._script(keys=self._keys, args=[event.position, stream])


class AuditRecord:
    """Reads what the auditor process recorded in Redis."""

    def __init__(self, ns: Namespace, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.keys = audit_keys(ns.redis_prefix)

    async def counts(self) -> BusCounts:
        k = self.keys
        distinct = int(await self.redis.scard(k["positions"]))
        values = await self.redis.mget(k["counter"], k["deliveries"], k["order_violations"])
        counter, deliveries, violations = (int(v or 0) for v in values)
        return BusCounts(distinct, counter, deliveries, violations)

    async def positions(self) -> frozenset[int]:
        out: set[int] = set()
        async for member in self.redis.sscan_iter(self.keys["positions"], count=5000):
            out.add(int(member))
        return frozenset(out)


async def declare_audit_queues(
    config: DataLayerConfig, redis: aioredis.Redis, ns: Namespace
) -> None:
    """Declare and bind the audit group's durable queues once, before any relay publishes (a
    publish no queue is bound for is refused), so events wait there while the auditor is down."""
    bus = RabbitMQEventBus(config.rabbitmq, group=GROUP)
    bus.subscribe_all(AuditHandler(redis, ns.redis_prefix))
    await bus.start()
    try:
        await bus.wait_ready()
    finally:
        await bus.stop()


async def main() -> None:
    config = DataLayerConfig.from_env()
    redis = aioredis.Redis.from_url(config.redis.url)
    bus = RabbitMQEventBus(config.rabbitmq, group=GROUP)
    bus.subscribe_all(AuditHandler(redis, config.redis.key_prefix))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await bus.start()
        await bus.wait_ready()
        print("audit ready", flush=True)
        await stop.wait()
    finally:
        await bus.stop()
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
