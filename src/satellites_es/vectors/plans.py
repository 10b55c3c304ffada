"""Search plans: what a search of one namespace needs besides the queries, built once per write.

A plan holds, for one filter, the labels it allows, the FAISS ``IDSelector`` over them and the
``SearchParameters`` per ``k``. Building them per query costs more than the approximate search
they restrict (a filter's ``IDSelectorBatch`` over its labels, and even a bare
``SearchParametersHNSW``; BENCHMARKS.md, "Vectors on approximate indexes", has the figures). A caller of raw FAISS
builds its selector once and reuses it; so does :class:`PlanCache`, until the namespace changes.

Validity. Every write bumps the namespace's ``version``; a plan records the version it was built
at, and the cache drops every plan when it sees a newer one. Searches run under the namespace's
shared lock, so the version cannot move during a search; concurrent searches (worker threads and
the event loop) may build the same plan twice, which is harmless, and a lock keeps the cache's
own bookkeeping consistent. At most :data:`MAX_PLANS` filters are kept (least recently built
first out), so a stream of distinct filters cannot grow memory without bound.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._faiss import faiss

__all__ = ["MAX_PLANS", "PlanCache", "SearchPlan"]

#: Filters whose plans are kept per namespace.
MAX_PLANS = 16

FilterKey = tuple[Any, ...]


@dataclass
class SearchPlan:
    """``allowed`` is None when every live vector may match (no filter)."""

    allowed: set[int] | None
    candidates: int
    selector: Any
    #: ``(k, thread id) -> SearchParameters`` (or None: a plain ``search``), filled on first
    #: use; per thread because a search borrows its parameters object (see ``Namespace``).
    params: dict[tuple[int, int], Any] = field(default_factory=dict)
    #: Objects FAISS holds raw pointers to (an ``IDSelectorNot``'s inner selector).
    keep: tuple[Any, ...] = ()


class PlanCache:
    def __init__(self) -> None:
        self._plans: dict[FilterKey, SearchPlan] = {}
        self._version = -1
        self._lock = threading.Lock()

    def get(self, key: FilterKey, version: int) -> SearchPlan | None:
        """The plan for ``key`` if one was built at ``version`` (never builds: no cost)."""
        return self._plans.get(key) if version == self._version else None

    def build(self, key: FilterKey, version: int, make: Callable[[], SearchPlan]) -> SearchPlan:
        plan = self.get(key, version)
        if plan is not None:
            return plan
        plan = make()
        with self._lock:
            if version != self._version:
                self._plans = {}
                self._version = version
            self._plans[key] = plan
            while len(self._plans) > MAX_PLANS:
                del self._plans[next(iter(self._plans))]
        return plan


def batch_selector(labels: set[int]) -> Any:
    return faiss.IDSelectorBatch(np.fromiter(labels, np.int64, len(labels)))


def excluding(dead: set[int]) -> tuple[Any, Any]:
    """A selector of every label but ``dead``, and the inner selector it points to."""
    inner = batch_selector(dead)
    return faiss.IDSelectorNot(inner), inner
