"""Metadata equality filters, answered from an inverted index.

A filter ``{"lang": "en", "year": 2024}`` matches vectors whose metadata holds every key with an
equal value (Python equality of JSON values: ``2024 == 2024.0``, but ``True`` is not ``1``; lists
and objects compare by their canonical JSON). An empty filter matches everything.

The index maps ``(key, value)`` to the set of FAISS labels carrying it, so a filtered query costs
the size of the smallest matching set, not a scan of the namespace. The matching labels are
handed to FAISS as an ``IDSelectorBatch`` (``SearchParameters(sel=...)``): the search then runs over
the matching subset only, and returns ``top_k`` results whenever that many match.

Keys are indexed on demand. A key enters the index the first time a filter uses it (one scan of
the namespace's metadata, under a lock: searches run concurrently) and is kept up to date by
every write from then on. Keys nobody filters on (a title, a text, a unique id) cost writes
nothing: indexing every key had been a third of a FAISS replay's write time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["MetadataIndex", "filter_key"]

Hashable = tuple[str, Any]


def _canon(value: Any) -> Hashable:
    if isinstance(value, bool) or value is None:
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)  # 1 == 1.0 and hash(1) == hash(1.0)
    if isinstance(value, str):
        return ("s", value)
    return ("j", json.dumps(value, sort_keys=True, separators=(",", ":")))


def filter_key(flt: Mapping[str, Any] | None) -> tuple[tuple[str, Hashable], ...]:
    """A hashable, order-free form of a filter: queries sharing it can share one FAISS search."""
    if not flt:
        return ()
    return tuple(sorted((str(k), _canon(v)) for k, v in flt.items()))


class MetadataIndex:
    """``(key, value) -> labels`` for the keys filters have used; the caller keeps it in step
    with the namespace (``add``/``remove`` under its exclusive lock) and hands ``match`` the
    namespace's metadata, from which a key not indexed yet is indexed."""

    def __init__(self) -> None:
        self._postings: dict[tuple[str, Hashable], set[int]] = {}
        self._keys: frozenset[str] = frozenset()  # replaced, never mutated: read without a lock
        self._building = threading.Lock()

    @property
    def keys(self) -> frozenset[str]:
        """The metadata keys indexed so far."""
        return self._keys

    def add(self, label: int, metadata: Mapping[str, Any] | None) -> None:
        if not metadata or not self._keys:
            return
        for key in self._keys & metadata.keys():
            self._postings.setdefault((key, _canon(metadata[key])), set()).add(label)

    def remove(self, label: int, metadata: Mapping[str, Any] | None) -> None:
        if not metadata or not self._keys:
            return
        for key in self._keys & metadata.keys():
            posting_key = (key, _canon(metadata[key]))
            labels = self._postings.get(posting_key)
            if labels is not None:
                labels.discard(label)
                if not labels:
                    del self._postings[posting_key]

    def match(
        self,
        key: tuple[tuple[str, Hashable], ...],
        entries: Callable[[], Iterable[tuple[int, Mapping[str, Any] | None]]],
    ) -> set[int]:
        """Labels matching every pair of a non-empty ``filter_key``; ``entries`` yields every
        ``(label, metadata)`` of the namespace, read only to index a key seen for the first
        time."""
        missing = {name for name, _ in key} - self._keys
        if missing:
            self._index(missing, entries)
        sets = [self._postings.get(pair, set()) for pair in key]
        sets.sort(key=len)
        result = set(sets[0])
        for other in sets[1:]:
            result &= other
            if not result:
                break
        return result

    def _index(
        self,
        names: set[str],
        entries: Callable[[], Iterable[tuple[int, Mapping[str, Any] | None]]],
    ) -> None:
        with self._building:  # concurrent searches: one builds, the others find it built
            names = names - self._keys
            if not names:
                return
            built: dict[tuple[str, Hashable], set[int]] = {}
            for label, metadata in entries():
                if metadata:
                    for name in names & metadata.keys():
                        built.setdefault((name, _canon(metadata[name])), set()).add(label)
            self._postings.update(built)
            self._keys = self._keys | names

    def __len__(self) -> int:
        return len(self._postings)
