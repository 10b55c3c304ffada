"""The soak's bus auditor, a process of its own (so the soak can SIGKILL it too).

``python bench/soak_audit.py`` with the soak's ``SATELLITES_*`` variables subscribes to every
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
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from satellites_es.bus.rabbitmq import RabbitMQEventBus  # noqa: E402
from satellites_es.config import DataLayerConfig  # noqa: E402
from satellites_es.events import DataEvent  # noqa: E402

GROUP = "soak-audit"

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


def audit_keys(prefix: str) -> dict[str, str]:
    names = ("positions", "counter", "deliveries", "last_by_key", "order_violations")
    return {name: f"{prefix}audit:{name}" for name in names}


class AuditHandler:
    subscriber_name = GROUP

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        keys = audit_keys(prefix)
        self._keys = [keys[n] for n in ("positions", "counter", "deliveries", "last_by_key",
                                        "order_violations")]  # fmt: skip
        self._script = redis.register_script(AUDIT_LUA)

    async def __call__(self, event: DataEvent) -> None:
        if event.position is None:
            return
        stream = f"{event.resource}\x1f{event.key}"
        await self._script(keys=self._keys, args=[event.position, stream])


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
