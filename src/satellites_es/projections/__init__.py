"""Projections: the log replayed into Redis caches, Elasticsearch indices and FAISS namespaces.

``model`` (what a projection is), ``sinks`` (the protocol) with ``redis_sink``, ``es_sink`` and
``faiss_sink``, ``fields`` (a FAISS handler written as fields, replayed as columns),
``checkpoints`` (Postgres bookkeeping), ``projector`` (apply the log in order, follow it live),
``rebuild`` (blue/green rebuild by replay, rollback), ``discovery`` (which projections a
command runs) and ``supervisor`` (a process's followers, restarted when they fail).
"""

from __future__ import annotations

from .checkpoints import Checkpoints
from .fields import VectorFields, VectorRun
from .model import Change, Delete, PoisonPolicy, Projection, Upsert
from .projector import Progress, Projector, follow_active
from .rebuild import RebuildResult, ensure_active, rebuild, rollback
from .sinks import Sink, SinkDump

__all__ = [
    "Change",
    "Checkpoints",
    "Delete",
    "PoisonPolicy",
    "Progress",
    "Projection",
    "Projector",
    "RebuildResult",
    "Sink",
    "SinkDump",
    "Upsert",
    "VectorFields",
    "VectorRun",
    "ensure_active",
    "follow_active",
    "rebuild",
    "rollback",
]
