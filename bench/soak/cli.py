"""The soak's command line: ``python -m bench.soak --minutes N [--rate 200] [--keys 500]
[--seed S]`` (or ``--seconds``); ``--sabotage`` damages the results on purpose, and the run
must then fail (:mod:`bench.soak.sabotage`)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from bench.soak.run import soak
from bench.soak.sabotage import EXPECTED


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Soak test: steady producers, random faults, then every sink compared with "
        "the log key by key.",
    )
    p.add_argument("--minutes", type=float, default=10.0, help="How long to produce.")
    p.add_argument("--seconds", type=float, default=None, help="Overrides --minutes.")
    p.add_argument("--rate", type=float, default=200.0, help="Events per second.")
    p.add_argument("--keys", type=int, default=500, help="Keys per resource.")
    p.add_argument("--seed", type=int, default=None, help="Random seed (printed).")
    p.add_argument("--fault-min", type=float, default=2.0, help="Least seconds between faults.")
    p.add_argument("--fault-max", type=float, default=6.0, help="Most seconds between faults.")
    p.add_argument("--rabbit-every", type=float, default=120.0,
                   help="At most one RabbitMQ restart per this many seconds.")  # fmt: skip
    p.add_argument("--quiet", type=float, default=5.0,
                   help="No new fault in the last seconds of production.")  # fmt: skip
    p.add_argument("--cut-min", type=float, default=5.0,
                   help="Shortest cut of Redis or Elasticsearch, in seconds.")  # fmt: skip
    p.add_argument("--cut-max", type=float, default=60.0, help="Longest cut.")
    p.add_argument("--cut-gap-min", type=float, default=10.0,
                   help="Least seconds between two cuts of one sink.")  # fmt: skip
    p.add_argument("--cut-gap-max", type=float, default=50.0)
    p.add_argument("--poison-min", type=float, default=2.0,
                   help="Least seconds between two poison events.")  # fmt: skip
    p.add_argument("--poison-max", type=float, default=12.0)
    p.add_argument("--catchup-timeout", type=float, default=240.0)
    p.add_argument("--report-every", type=float, default=30.0)
    p.add_argument("--keep", action="store_true", help="Keep the work dir and logs.")
    p.add_argument("--sabotage", action="store_true",
                   help="Damage the results on purpose before the comparison (checks the "
                        f"checker): the run fails with {EXPECTED}.")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.rate <= 0 or args.keys < 1:
        p.error("--rate and --keys must be positive")
    return asyncio.run(_cancellable(soak(args)))


async def _cancellable(work: Coroutine[Any, Any, int]) -> int:
    """Run ``work``; SIGTERM or SIGINT cancels it, so its exit stack stops the children,
    restarts RabbitMQ if it was stopped, and removes the namespace."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return int(await task)
    except asyncio.CancelledError:
        print("soak: interrupted; cleaned up", file=sys.stderr, flush=True)
        return 130
