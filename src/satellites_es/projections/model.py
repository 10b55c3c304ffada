"""What a projection is: a name, a version, the event types it reads, and a pure function from an
event to the change it makes in its sink.

A projection is defined in code (the repository's top-level ``projections/`` holds the ones the
demo uses)::

    entities = Projection(
        name="entities", version=1, sink="redis",
        event_types=("entity.upserted", "entity.deleted"),
        handler=lambda e: Delete(e.key) if e.type == "entity.deleted" else Upsert(e.key, e.payload),
    )

The handler returns an :class:`Upsert` (the whole document for the key), a :class:`Delete` (a
tombstone), or ``None`` to ignore the event. The framework stamps each change with the event's
position; every sink applies a change only if that position is newer than what it holds for
the key, which makes a duplicate, a late or a replayed event harmless (exactly-once effect).
Changing what a handler produces is a new ``version``: the framework rebuilds it by replay
beside the live one and flips when it has caught up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigurationError
from ..events import DataEvent

if TYPE_CHECKING:
    from ..facade import DataLayer
    from .sinks import Sink

__all__ = ["Change", "Delete", "PoisonPolicy", "Projection", "SinkKind", "Upsert"]

SinkKind = Literal["redis", "elasticsearch", "faiss"]
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Upsert:
    key: str
    document: Mapping[str, Any]
    position: int = 0


@dataclass(frozen=True)
class Delete:
    key: str
    position: int = 0


Change = Upsert | Delete
Handler = Callable[[DataEvent], Upsert | Delete | None]
#: Wraps the sink built for a projection (``build_sink``) with behaviour of its own: the
#: semantic layer's vector projection embeds, in batches, what its version's model did not.
SinkAdapter = Callable[["Sink", "DataLayer"], "Sink"]


PoisonAction = Literal["park", "stop"]


@dataclass(frozen=True)
class PoisonPolicy:
    """What a projector does with a poison event: one that fails for good (a handler that raises
    on it, a change the sink refuses), as :mod:`satellites_es.faults` classifies it.

    * ``attempts``: how many times a change the sink refuses is tried, alone, before it counts
      as poison (a handler's exception counts at once: the handler is a pure function of the
      event, so the same event raises again);
    * ``live``: following the log, ``park`` sets it aside in ``parked_events`` and goes on (the
      default, like Marten's async daemon), ``stop`` stops the projection there and reports it;
    * ``rebuild``: during a rebuild, ``stop`` (the default) fails the rebuild naming the event, so
      a new version is not flipped in with holes; ``park`` builds it without them.

    Either way the other events of the batch are applied, and the error names the projection,
    position, key, event id and cause.
    """

    attempts: int = 3
    live: PoisonAction = "park"
    rebuild: PoisonAction = "stop"

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigurationError("PoisonPolicy.attempts", "must be an integer >= 1")
        for name in ("live", "rebuild"):
            if getattr(self, name) not in ("park", "stop"):
                raise ConfigurationError(f"PoisonPolicy.{name}", "must be 'park' or 'stop'")


@dataclass(frozen=True)
class Projection:
    name: str
    version: int
    sink: SinkKind
    event_types: tuple[str, ...]
    handler: Handler
    #: Elasticsearch: the index body (mappings, settings).
    #: FAISS: ``dimension``, ``metric``, ``index_kind``.
    options: Mapping[str, Any] = field(default_factory=dict)
    #: Redis: seconds a cached document lives (None: no expiry). Tombstones never expire early.
    ttl_seconds: int | None = None
    #: What to do with an event that fails for good (see :class:`PoisonPolicy`).
    poison: PoisonPolicy = field(default_factory=PoisonPolicy)
    #: Wraps the native sink (see :data:`SinkAdapter`); None: the native sink as it is.
    sink_adapter: SinkAdapter | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigurationError(f"projection {self.name!r}", "name must match [a-z][a-z0-9_]*")
        if self.version < 1:
            raise ConfigurationError(f"projection {self.name}", "version must be >= 1")
        if not self.event_types:
            raise ConfigurationError(f"projection {self.name}", "needs at least one event type")

    def target(self, version: int | None = None) -> str:
        """The sink-side name of one version: ``entities_v2``."""
        return f"{self.name}_v{self.version if version is None else version}"

    def change_for(self, event: DataEvent) -> Change | None:
        if event.type not in self.event_types or event.position is None:
            return None
        change = self.handler(event)
        if change is None:
            return None
        if isinstance(change, Upsert):
            return Upsert(change.key, change.document, event.position)
        return Delete(change.key, event.position)
