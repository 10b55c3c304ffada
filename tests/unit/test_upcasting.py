"""The upcaster registry: chains compose, and a broken chain is refused at start naming its type."""

from __future__ import annotations

from typing import Any

import pytest

from satellites_es import DataLayer, DataLayerConfig
from satellites_es.errors import ConfigurationError, UpcastError
from satellites_es.upcasting import Upcasters


def _add(field: str) -> Any:
    def step(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, field: len(payload)}

    return step


def test_a_chain_runs_from_any_stored_version_to_the_latest() -> None:
    registry = Upcasters()
    registry.register("doc.put", 1, _add("b"))
    registry.register("doc.put", 2, _add("c"))
    registry.check()
    assert registry.latest == {"doc.put": 3}
    assert registry.upcast("doc.put", 1, {"a": 0}) == {"a": 0, "b": 1, "c": 2}
    assert registry.upcast("doc.put", 2, {"a": 0}) == {"a": 0, "c": 1}
    assert registry.upcast("doc.put", 3, {"a": 0}) == {"a": 0}
    assert registry.upcast("other", 1, {"a": 0}) == {"a": 0}  # no upcasters: v1 is the latest


async def test_a_chain_with_a_gap_fails_at_start_naming_the_type() -> None:
    registry = Upcasters()
    registry.register("doc.put", 1, _add("b"))
    registry.register("doc.put", 3, _add("d"))  # nothing from v2
    with pytest.raises(ConfigurationError, match=r"'doc.put': a gap in the chain to v4: no "
                                                 r"upcaster from v2"):  # fmt: skip
        registry.check()
    layer = DataLayer(DataLayerConfig(), upcasters=registry)
    with pytest.raises(ConfigurationError, match=r"'doc\.put': a gap"):
        await layer.start()  # refused before any backend is contacted
    assert layer.state.value == "new"


@pytest.mark.parametrize(
    ("steps", "latest", "message"),
    [
        ([(1, 2), (2, 1)], None, "from v2 goes to v1: a cycle"),
        ([(1, 1)], None, "from v1 goes to v1: a cycle"),
        ([(1, 3)], 2, "goes to v3, past the latest v2"),
        ([(1, 2)], 3, "a gap in the chain to v3: no upcaster from v2"),
    ],
)
def test_broken_chains_are_refused(
    steps: list[tuple[int, int]], latest: int | None, message: str
) -> None:
    registry = Upcasters()
    if latest is not None:
        registry.declare("doc.put", latest)
    for source, target in steps:
        registry.register("doc.put", source, _add("x"), target=target)
    with pytest.raises(ConfigurationError, match=message):
        registry.check()


def test_two_upcasters_from_one_version_are_refused() -> None:
    registry = Upcasters()
    registry.register("doc.put", 1, _add("b"))
    with pytest.raises(ConfigurationError, match="two upcasters from schema version 1"):
        registry.register("doc.put", 1, _add("c"))


def test_a_failing_or_wrong_upcaster_names_the_event() -> None:
    registry = Upcasters()

    @registry.upcaster("doc.put", 1)
    def broken(payload: dict[str, Any]) -> dict[str, Any]:
        return payload["missing"]  # type: ignore[no-any-return]

    with pytest.raises(UpcastError, match=r"event e-1 \(doc.put\): the upcaster from v1 failed"):
        registry.upcast("doc.put", 1, {}, "e-1")
    with pytest.raises(UpcastError, match="returned list, not a dict"):
        registry.upcast("doc.put", 1, {"missing": []}, "e-2")
