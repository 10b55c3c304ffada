"""Where projections come from: SATELLITES_PROJECTIONS_MODULE, the entry-point group, the demo's."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from satellites_es.errors import ConfigurationError
from satellites_es.projections.discovery import ENTRY_POINT_GROUP, load_projections

MODULE = """
from satellites_es.projections import Projection, Upsert

def handler(event):
    return Upsert(event.key, dict(event.payload))

{name} = Projection(name="{name}", version=1, sink="redis", event_types=("x.upserted",),
                    handler=handler)
PROJECTIONS = {{"{name}": {name}}}
"""


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[Path]:
    """A directory on sys.path where a test can put modules and distributions' metadata."""
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("userproj")]:
            del sys.modules[name]


def _distribution(root: Path, dist: str, entries: dict[str, str]) -> None:
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}\n")


def test_without_anything_installed_the_demos_projections_are_found() -> None:
    assert sorted(load_projections(None)) == ["documents", "embeddings", "entities"]


def test_the_module_named_by_the_variable_wins(installed: Path) -> None:
    (installed / "userproj_a.py").write_text(MODULE.format(name="orders"))
    assert list(load_projections("userproj_a")) == ["orders"]


def test_entry_points_replace_the_demos(installed: Path) -> None:
    (installed / "userproj_b.py").write_text(MODULE.format(name="invoices"))
    (installed / "userproj_c.py").write_text(MODULE.format(name="carts"))
    _distribution(installed, "userproj_b", {"billing": "userproj_b:PROJECTIONS"})
    _distribution(installed, "userproj_c", {"shop": "userproj_c:carts"})  # a single Projection
    assert sorted(load_projections(None)) == ["carts", "invoices"]


def test_two_entry_points_defining_one_name_is_a_configuration_error(installed: Path) -> None:
    (installed / "userproj_d.py").write_text(MODULE.format(name="same"))
    _distribution(installed, "userproj_d", {"one": "userproj_d:PROJECTIONS", "two": "userproj_d"})
    with pytest.raises(ConfigurationError, match="'same' is also defined by entry point 'one'"):
        load_projections(None)


@pytest.mark.parametrize(
    ("module", "source", "message"),
    [
        ("userproj_missing", None, "SATELLITES_PROJECTIONS_MODULE: no module 'userproj_missing'"),
        ("userproj_e", "X = 1\n", "userproj_e has no PROJECTIONS mapping"),
        ("userproj_f", "PROJECTIONS = {'a': 1}\n", "PROJECTIONS['a'] in userproj_f must be"),
        ("userproj_g", "import userproj_nodep\n", "No module named 'userproj_nodep'"),
    ],
)
def test_a_bad_module_is_a_configuration_error_naming_it(
    installed: Path, module: str, source: str | None, message: str
) -> None:
    if source is not None:
        (installed / f"{module}.py").write_text(source)
    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_projections(module)
