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


def test_an_installed_wheel_runs_the_demo_and_a_rebuild_outside_the_repository(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """A fresh venv holding only the wheel (its dependencies reached through a .pth to the
    project's venv, so nothing is downloaded); run from a directory with no checkout in it."""
    import os
    import site
    import sysconfig

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("satellites_es-*.whl")
    # no PYTHONPATH: pip would see the checkout's package through it and install nothing
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--no-deps", "-q", str(wheel)],
        check=True, capture_output=True, timeout=300, env=clean,
    )  # fmt: skip
    # then the dependencies (after the install, or pip finds the project's own dist-info there
    # and installs nothing); a plain path line does not run the project's editable .pth
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SATELLITES_")}
    env.pop("PYTHONPATH", None)
    env.update(cli_env, COLUMNS="200")

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(venv / "bin" / "satellites-es"), *args], cwd=elsewhere,
                              env={**env, **extra}, capture_output=True, text=True, timeout=300)  # fmt: skip

    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import satellites_es; print(satellites_es.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)  # fmt: skip
    assert where.stdout.strip().startswith(str(venv)), where.stdout

    data_dir = elsewhere / "demo-data"
    demo = run("demo", "--documents", "150", "--data-dir", str(data_dir))
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "demo finished OK" in demo.stdout

    # the demo's embeddings, rebuilt by the installed command in the demo's namespace
    rebuilt = run("rebuild", "embeddings", SATELLITES_POSTGRES_SCHEMA="satellites_demo",
                  SATELLITES_FAISS_INDEX_PATH=str(data_dir / "faiss"),
                  SATELLITES_FAISS_DIMENSION="384", SATELLITES_REDIS_KEY_PREFIX="demo:",
                  SATELLITES_ELASTICSEARCH_INDEX_PREFIX="demo-",
                  SATELLITES_RABBITMQ_EXCHANGE="satellites.demo.events")  # fmt: skip
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "embeddings: version 3 is active (previous 2); 150 events replayed" in rebuilt.stdout
