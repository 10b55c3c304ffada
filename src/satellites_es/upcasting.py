"""Schema evolution by upcasting on read: old payload shapes become the current one.

An event type's payload changes over the years (a field renamed, an embedding model's field
split in two). Rewriting the log would break its promise (stored rows are never touched), and
making every handler accept every old shape forever does not scale. So, as Marten,
eventsourcing (``upcast_v1_v2``) and Protean (``@upcaster``) do, each event records the
*schema version* of its payload (``DataEvent.schema_version``, 1 by default, stored in the
``metadata`` column), and an :class:`Upcasters` registry holds, per type, functions from one
version's payload to a later one's (``v1 -> v2 -> v3``)::

    upcasters = Upcasters()

    @upcasters.upcaster("document.indexed", 1)          # v1 -> v2
    def title_became_headline(payload):
        payload["headline"] = payload.pop("title")
        return payload

    DataLayer(config, upcasters=upcasters)

Every read of the log applies the chain, so readers only ever see the latest version:
``EventStore.read``/``read_stream``/``read_at`` and the column reads of ``read_payloads`` (the
``VectorFields`` fast path), hence the relay (the bus carries the current version),
projections and their rebuilds, catch-up subscriptions and replays.

**Checked at start.** :meth:`Upcasters.check` (run by the event store and ``DataLayer.start``)
refuses a chain with a gap (a version below the latest without an upcaster from it), a step
that does not move forward (a cycle), two upcasters from one version, or a step past the
declared latest version, with a :class:`~satellites_es.errors.ConfigurationError` naming the
type. An event whose schema version is newer than the registry knows for its type (1 for a type
without upcasters) is an :class:`~satellites_es.errors.UpcastError` naming it, never passed on
silently: the reader's code is older than the producer's. A read gives the events before it
first, so the relay and the projections stop exactly at it (they retry, saying why) until the
code knows its version; nothing after it is published or applied meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from .errors import ConfigurationError, UpcastError

__all__ = ["Upcaster", "Upcasters"]

#: A function from one schema version's payload to the next's (it may change it in place).
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class Upcasters:
    """Per event type, upcasters from each old schema version; see the module docstring."""

    def __init__(self) -> None:
        self._steps: dict[str, dict[int, tuple[int, Upcaster]]] = {}
        self._declared: dict[str, int] = {}
        #: The latest schema version per type that has upcasters (others: 1).
        self.latest: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self.latest)

    def register(
        self, event_type: str, source: int, function: Upcaster, *, target: int | None = None
    ) -> None:
        """``function`` turns a ``source`` payload of ``event_type`` into a ``target`` one
        (``source + 1`` by default)."""
        target = source + 1 if target is None else target
        steps = self._steps.setdefault(event_type, {})
        if source in steps:
            raise ConfigurationError(
                "upcasters", f"{event_type!r}: two upcasters from schema version {source}"
            )
        steps[source] = (target, function)
        self.latest[event_type] = self._declared.get(event_type) or max(
            t for t, _ in steps.values()
        )

    def upcaster(
        self, event_type: str, source: int, *, target: int | None = None
    ) -> Callable[[Upcaster], Upcaster]:
        """Decorator form of :meth:`register`."""

        def register(function: Upcaster) -> Upcaster:
            self.register(event_type, source, function, target=target)
            return function

        return register

    def declare(self, event_type: str, latest: int) -> None:
        """State the latest schema version of ``event_type`` (else: the highest target)."""
        self._declared[event_type] = latest
        self.latest[event_type] = latest

    def check(self) -> None:
        """:class:`ConfigurationError` naming the type unless every chain runs without a gap
        or a backward step from version 1 to a known latest version."""
        for event_type, latest in self.latest.items():
            steps = self._steps.get(event_type, {})
            for source, (target, _) in sorted(steps.items()):
                if target <= source:
                    raise ConfigurationError("upcasters", f"{event_type!r}: the upcaster from "
                                             f"v{source} goes to v{target}: a cycle")  # fmt: skip
                if target > latest:
                    raise ConfigurationError("upcasters", f"{event_type!r}: the upcaster from "
                                             f"v{source} goes to v{target}, past the latest "
                                             f"v{latest}")  # fmt: skip
            missing = [v for v in range(1, latest) if v not in steps]
            if missing:
                raise ConfigurationError(
                    "upcasters",
                    f"{event_type!r}: a gap in the chain to v{latest}: no upcaster from "
                    + ", ".join(f"v{v}" for v in missing),
                )

    def upcast(
        self, event_type: str, version: int, payload: Any, event: object = None
    ) -> dict[str, Any]:
        """``payload`` of schema ``version`` as the latest version of ``event_type``;
        :class:`UpcastError` when the version is newer than known or a step fails. ``event``
        (an id or position) names the event in the error."""
        latest = self.latest.get(event_type, 1)
        if version > latest or version < 1:
            raise UpcastError(
                f"event {event} ({event_type}) has schema version {version}, but this code "
                f"knows {event_type!r} up to v{latest}: register its upcasters, or upgrade"
            )
        steps = self._steps.get(event_type, {})
        while version < latest:
            target, function = steps[version]
            try:
                payload = function(payload)
            except Exception as exc:
                raise UpcastError(
                    f"event {event} ({event_type}): the upcaster from v{version} failed: {exc!r}"
                ) from exc
            if not isinstance(payload, dict):
                raise UpcastError(
                    f"event {event} ({event_type}): the upcaster from v{version} returned "
                    f"{type(payload).__name__}, not a dict"
                )
            version = target
        return cast(dict[str, Any], payload)


#: The registry of a log read without upcasters: every type is at schema version 1.
NONE = Upcasters()
