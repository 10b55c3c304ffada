"""The seams hold: the relay, projector, rebuild and service modules name no driver and probe
no capability, and no SQL text lives outside ``sql/queries.sql`` (the package's Alembic
scripts, released and frozen, aside)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "satellites_es"
ALGORITHMS = ("relay.py", "projections/projector.py", "projections/rebuild.py", "service_runner.py",
              "projections/supervisor.py")  # fmt: skip
DRIVERS = {"aio_pika", "aiormq", "asyncpg", "redis", "elasticsearch", "elastic_transport"}
SQL = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|GRANT|REVOKE|COMMENT ON|SET |SHOW "
    r"|ANALYZE|LOCK TABLE|TRUNCATE|WITH \w+ AS)\b"
)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.mark.parametrize("module", ALGORITHMS)
def test_the_algorithms_import_no_driver(module: str) -> None:
    tree = _tree(PACKAGE / module)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}  # fmt: skip
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}  # fmt: skip
    assert imported & DRIVERS == set()


@pytest.mark.parametrize("module", [*ALGORITHMS, "facade.py", "bus/outbox.py"])
def test_no_capability_is_probed(module: str) -> None:
    """The façade hands out the native clients (it imports the drivers), but asks no object
    what it can do either: the bus's capabilities are types (``RelayBus``, the RabbitMQ bus)."""
    tree = _tree(PACKAGE / module)
    probes = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
              and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")]  # fmt: skip
    assert probes == []


def _strings(tree: ast.Module) -> list[tuple[int, str]]:
    """Every string literal and f-string text part, docstrings left out."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                                | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}  # fmt: skip
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]  # fmt: skip


def test_no_sql_text_outside_the_sql_package() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(("sql/", "_migrations/")):
            continue
        found += [f"{relative}:{line}: {text[:60]!r}" for line, text in _strings(_tree(path))
                  if SQL.match(text)]  # fmt: skip
    assert found == []


def test_the_guard_sees_sql_and_probes() -> None:
    """The checks above would notice: a statement in a string, an f-string, a getattr."""
    tree = ast.parse('q = "SELECT 1"\nf"DROP SCHEMA {s}"\ngetattr(bus, "publisher")')
    assert [SQL.match(text) is not None for _, text in _strings(tree)] == [True, True, False]
