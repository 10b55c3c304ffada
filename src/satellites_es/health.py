"""Health check types: one :class:`BackendHealth` per backend, aggregated into :class:`Health`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["BackendHealth", "Health", "probe"]

Status = Literal["ok", "down", "disabled"]


@dataclass(frozen=True)
class BackendHealth:
    status: Status
    latency_ms: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "down"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 2),
            "details": dict(self.details),
            "error": self.error,
        }


@dataclass(frozen=True)
class Health:
    """The seed's ``Health(ok, details)``; ``details`` maps a backend name to its health."""

    ok: bool
    details: Mapping[str, BackendHealth]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "backends": {k: v.to_dict() for k, v in self.details.items()}}


async def probe(check: Callable[[], Awaitable[Mapping[str, Any]]], timeout: float) -> BackendHealth:
    """Run one backend check within ``timeout``; never raises (health must not)."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            details = await check()
    except TimeoutError:
        return BackendHealth("down", _ms(started), error=f"no answer within {timeout:g}s")
    except Exception as exc:  # health reports every failure instead of raising it
        return BackendHealth("down", _ms(started), error=f"{type(exc).__name__}: {exc}")
    return BackendHealth("ok", _ms(started), details)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
