"""Decoding JSON text that Postgres printed: msgspec's decoder, with ``json.loads`` as the rule.

Every replayed event's payload is JSON text (jsonb as asyncpg receives it). ``json.loads`` costs
~3 us for a small document and ~5 us for a 2 KB one on the project's machine, mostly fixed
Python-level overhead; ``msgspec.json.decode`` takes ~1.4 us for the 2 KB one. Both give the
same values for what jsonb can hold: integers of any size stay exact ints (orjson, measured
first, turns those beyond 64 bits into floats), floats are parsed correctly rounded, keys are
``str``. Where msgspec refuses a document (a number beyond the float range, which jsonb's
``numeric`` can hold and ``json.loads`` reads as ``inf``), the document is read again by
``json.loads``, so the result is always what ``json.loads`` returns.
``tests/unit/test_jsontext.py`` compares the two on generated documents.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import msgspec

__all__ = ["loads", "loads_many"]

_decode = msgspec.json.decode
_FAILED = (msgspec.DecodeError, msgspec.ValidationError)


def loads(text: str) -> Any:
    """``json.loads(text)``, faster."""
    try:
        return _decode(text)
    except _FAILED:
        return json.loads(text)


def loads_many(texts: Sequence[str]) -> list[Any]:
    """``[json.loads(t) for t in texts]``: one decoder call for the whole batch (as a JSON array
    of the documents), the documents one by one only if that call fails."""
    if not texts:
        return []
    try:
        values: list[Any] = _decode("[" + ",".join(texts) + "]")
    except _FAILED:
        return [loads(text) for text in texts]
    if len(values) != len(texts):  # a text that was not one document (never from jsonb)
        return [json.loads(text) for text in texts]
    return values
