"""Write BENCHMARKS.md and its plot from a ``bench/run.py --json`` file.

``python bench/report.py out.json`` rewrites ``BENCHMARKS.md`` up to its first ``## `` section
(the sections after it, written by hand beside their stages, are kept) (the table: project, raw, ratio,
goal per figure) and ``bench/benchmarks.png`` (project against raw per stage: throughput figures
on the left, latency figures on the right).
"""

from __future__ import annotations

import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PLOT = ROOT / "bench" / "benchmarks.png"

HOW = """\
Measured with `python bench/run.py --json out.json` (then `python bench/report.py out.json`) on
this project's machine: 2 cores, 24 GiB, with Postgres, Redis and RabbitMQ on localhost and the
noida-db Elasticsearch emulator (no real Elasticsearch can run there). Every stage measures the
project and the raw client (asyncpg, aio-pika, redis-py, elasticsearch-py, FAISS) on the same work
in the same run; only the ratio is compared with the goal, because absolute figures on a shared
2-core machine move by up to 2x between runs. Goals come from the issues.
"""


def _is_throughput(unit: str) -> bool:
    return "/s" in unit


def table(results: dict[str, Any]) -> str:
    lines = [
        "| stage | figure | project | raw | ratio | unit | goal |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for stage, figures in results.items():
        for name, f in figures.items():
            lines.append(
                f"| {stage} | {name} | {f['project']:,.2f} | {f['raw']:,.2f} | {f['ratio']:.2f} "
                f"| {f.get('unit', '')} | {f.get('goal', '')} |"
            )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{s}\n{n}", f) for s, figs in results.items() for n, f in figs.items()]
    groups = [[r for r in rows if _is_throughput(r[1].get("unit", ""))],
              [r for r in rows if not _is_throughput(r[1].get("unit", ""))]]  # fmt: skip
    fig, axes = plt.subplots(1, 2, figsize=(14, 6))
    for ax, group, title in zip(
        axes, groups, ("throughput (higher is better)", "latency (lower is better)"), strict=True
    ):
        labels = [g[0] for g in group]
        xs = range(len(group))
        ax.bar([x - 0.2 for x in xs], [g[1]["project"] for g in group], 0.4, label="satellites-es")
        ax.bar([x + 0.2 for x in xs], [g[1]["raw"] for g in group], 0.4, label="raw client")
        ax.set_xticks(list(xs), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(json_path: str) -> None:
    results = json.loads(Path(json_path).read_text())
    plot(results, PLOT)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"# Benchmarks\n\nLatest run: {when}, Python {platform.python_version()}.\n\n{HOW}\n"
        f"![project against raw per stage](bench/benchmarks.png)\n\n{table(results)}\n"
    )
    target = ROOT / "BENCHMARKS.md"
    old = target.read_text() if target.exists() else ""
    kept = old[old.index("\n## ") :] if "\n## " in old else ""  # sections written by hand
    target.write_text(text + kept)
    print(f"wrote BENCHMARKS.md and {PLOT.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out.json")
