"""``jsontext.loads``/``loads_many`` give exactly what ``json.loads`` gives, on what Postgres's
jsonb prints: generated documents (floats with many digits, integers beyond 64 bits, unicode,
nesting) and the cases msgspec refuses, which fall back to ``json.loads``."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from satellites_es.jsontext import loads, loads_many


def _value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.getrandbits(rng.choice([8, 63, 64, 65, 200])) * rng.choice([1, -1])
    if kind == 1:
        return rng.uniform(-1e300, 1e300) * 10.0 ** rng.randint(-300, 0)
    if kind == 2:  # decimal text as jsonb's numeric prints it: up to 40 significant digits
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 40)))
        return f"__num__{digits[:1]}.{digits[1:] or '0'}e{rng.randint(-320, 300)}"
    if kind == 3:
        return "".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0xA0, 0xD7FF),
                                       rng.randint(0x10000, 0x10FFFF), 0x2028, 0x22, 0x5C]))
                       for _ in range(rng.randint(0, 12)))  # fmt: skip
    if kind == 4:
        return rng.choice([True, False, None])
    if kind == 5:
        return rng.choice([0, -0.0, 0.0, 5e-324, 1.7976931348623157e308, 2**63, -(2**63) - 1])
    if kind in (6, 7):
        return {f"k{i}\u00e9": _value(rng, depth + 1) for i in range(rng.randint(0, 4))}
    return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def _text(value: Any) -> str:
    """JSON text with the ``__num__`` strings written as bare numbers (many digits, exponents)."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace('"__num__', "").replace('__end__"', "")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (a == b and math.copysign(1, a) == math.copysign(1, b)) or (a != a and b != b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _numbers_closed(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("__num__"):
        return value + "__end__"
    if isinstance(value, dict):
        return {k: _numbers_closed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_closed(v) for v in value]
    return value


def test_generated_documents_decode_exactly_as_json_loads() -> None:
    rng = random.Random(20261130)
    texts = [_text(_numbers_closed({"doc": _value(rng, 0)})) for _ in range(3000)]
    for text in texts:
        assert _same(loads(text), json.loads(text)), text
    batch = loads_many(texts)
    assert len(batch) == len(texts)
    assert all(_same(got, json.loads(t)) for got, t in zip(batch, texts, strict=True))


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1e400}',  # numeric beyond the float range: json.loads gives inf
        '{"a": -1e400}',
        '{"big": 123456789012345678901234567890}',
    ],
)
def test_documents_msgspec_refuses_fall_back_to_json_loads(text: str) -> None:
    assert _same(loads(text), json.loads(text))
    assert _same(loads_many([text, '{"x": 1}']), [json.loads(text), {"x": 1}])


@pytest.mark.parametrize("texts", [["1,2"], ["", "{}"], ["[1", "2]"], ["{", "}"]])
def test_a_text_that_is_not_one_document_raises_as_json_loads_does(texts: list[str]) -> None:
    with pytest.raises(ValueError):
        loads_many(texts)


def test_empty_batch() -> None:
    assert loads_many([]) == []
