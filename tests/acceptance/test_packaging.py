"""The wheel carries what an installed ``satellites-es`` needs at run time, not just the code."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from satellites_es import migrate

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_ships_migrations_sql_and_type_marker(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("satellites_es-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    scripts = {
        f"satellites_es/_migrations/{p.relative_to(ROOT / 'migrations')}"
        for p in (ROOT / "migrations").rglob("*")
        if p.is_file() and p.suffix in {".py", ".mako"}
    }
    assert scripts and scripts <= names, scripts - names
    assert "satellites_es/sql/queries.sql" in names
    assert "satellites_es/py.typed" in names


def test_migrations_are_found_next_to_the_package() -> None:
    """The same path works in a checkout (a symlink to migrations/) and in an install."""
    assert migrate.MIGRATIONS_DIR.parent == Path(migrate.__file__).resolve().parent
    assert (migrate.MIGRATIONS_DIR / "env.py").is_file()
    assert (migrate.MIGRATIONS_DIR / "versions").resolve() == ROOT / "migrations" / "versions"
