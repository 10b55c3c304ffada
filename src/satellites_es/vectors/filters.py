"""Metadata equality filters, answered from an inverted index.

A filter ``{"lang": "en", "year": 2024}`` matches vectors whose metadata holds every key with an
equal value (Python equality of JSON values: ``2024 == 2024.0``, but ``True`` is not ``1``; lists
and objects compare by their canonical JSON). An empty filter matches everything.

The index maps ``(key, value)`` to the set of FAISS labels carrying it, so a filtered query costs
the size of the smallest matching set, not a scan of the namespace. The matching labels are
handed to FAISS as an ``IDSelectorBatch`` (``SearchParameters(sel=...)``): the search then runs over
the matching subset only, and returns ``top_k`` results whenever that many match.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
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
    """``(key, value) -> labels``; the caller keeps it in step with the namespace."""

    def __init__(self) -> None:
        self._postings: dict[tuple[str, Hashable], set[int]] = {}

    def add(self, label: int, metadata: Mapping[str, Any] | None) -> None:
        if not metadata:
            return
        for key, value in metadata.items():
            self._postings.setdefault((key, _canon(value)), set()).add(label)

    def remove(self, label: int, metadata: Mapping[str, Any] | None) -> None:
        if not metadata:
            return
        for key, value in metadata.items():
            posting_key = (key, _canon(value))
            labels = self._postings.get(posting_key)
            if labels is not None:
                labels.discard(label)
                if not labels:
                    del self._postings[posting_key]

    def match(self, key: tuple[tuple[str, Hashable], ...]) -> set[int]:
        """Labels matching every pair of a non-empty ``filter_key``."""
        sets = [self._postings.get(pair, set()) for pair in key]
        sets.sort(key=len)
        result = set(sets[0])
        for other in sets[1:]:
            result &= other
            if not result:
                break
        return result

    def clear(self) -> None:
        self._postings.clear()

    def rebuild(self, entries: Iterable[tuple[int, Mapping[str, Any] | None]]) -> None:
        self.clear()
        for label, metadata in entries:
            self.add(label, metadata)

    def __len__(self) -> int:
        return len(self._postings)
