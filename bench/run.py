"""One command for every benchmark: ``python bench/run.py [STAGE ...] [--quick] [--json PATH]``.

Each stage lives in ``bench/stages/<stage>.py`` and exposes ``async def run(quick: bool)``
returning ``{figure: {"project", "raw", "ratio", "unit", "goal"}}``: the project and the raw
client measured on the same work in the same run. Figures are noisy on a shared 2-core machine,
so only ratios are compared with goals, never absolute times.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES = (
    "append",
    "relay",
    "vectors",
    "rebuild",
    "audit",
    "replica",
    "upcast",
    "envelope",
    "semantic",
)

app = typer.Typer(add_completion=False)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def line(stage: str, figure: str, f: dict[str, Any]) -> str:
    return (
        f"{stage} {figure}: project={_fmt(f['project'])} raw={_fmt(f['raw'])} "
        f"ratio={f['ratio']:.2f} {f.get('unit', '')} (goal {f.get('goal', '-')})"
    )


async def run_stage(stage: str, quick: bool) -> dict[str, Any]:
    module = importlib.import_module(f"bench.stages.{stage}")
    return dict(await module.run(quick))


@app.command()
def main(
    stages: Annotated[
        list[str] | None, typer.Argument(help=f"Stages to run (default all: {', '.join(STAGES)}).")
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Smaller data; the whole run within ~3 minutes.")
    ] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the figures as JSON here.")
    ] = None,
) -> None:
    chosen = stages or list(STAGES)
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise typer.BadParameter(
            f"unknown stage(s): {', '.join(unknown)}; known: {', '.join(STAGES)}"
        )
    results: dict[str, Any] = {}
    failed = False
    for stage in chosen:
        started = time.perf_counter()
        try:
            figures = asyncio.run(run_stage(stage, quick))
        except Exception as exc:  # one stage failing must not hide the others' figures
            print(f"{stage} FAILED: {type(exc).__name__}: {exc}", flush=True)
            failed = True
            continue
        results[stage] = figures
        for figure, f in figures.items():
            print(line(stage, figure, f), flush=True)
        print(f"# {stage} took {time.perf_counter() - started:.1f}s", flush=True)
    if json_path:
        json_path.write_text(json.dumps(results, indent=2, sort_keys=True))
    if failed:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
