"""Draw the vector stage's recall-vs-throughput curves: ``python bench/plot_vectors.py out.json``.

Reads the ``curve_*`` figures of a ``bench/run.py vectors --json out.json`` run (each carries its
point: kind, parameter, recall and queries/s of both sides) and writes
``bench/vectors_recall.png``, ann-benchmarks style: recall@10 on x, queries/s (log) on y, one
line per kind and side, single queries on the left, 64 concurrent on the right.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PLOT = ROOT / "bench" / "vectors_recall.png"
SIDES = (
    ("single", "project_single", "raw_single", "raw FAISS, one at a time"),
    ("64 concurrent", "project_concurrent", "raw_batched", "raw FAISS, batches of 64"),
)


def points(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for name, figure in results.get("vectors", {}).items():
        if name.startswith("curve_") and name.endswith("_single"):
            point = figure["point"]
            by_kind.setdefault(point["kind"], []).append(point)
    return by_kind


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for ax, (title, project, raw, raw_label) in zip(axes, SIDES, strict=True):
        for kind, kind_points in points(results).items():
            kind_points.sort(key=lambda p: p["param"])
            recall = [p["project_recall"] for p in kind_points]
            line = ax.plot(
                recall, [p[project] for p in kind_points], "o-", label=f"{kind}, project"
            )
            ax.plot([p["raw_recall"] for p in kind_points], [p[raw] for p in kind_points], "x--",
                    color=line[0].get_color(), label=f"{kind}, {raw_label}")  # fmt: skip
            for p in kind_points:
                if kind != "flat":
                    ax.annotate(str(p["param"]), (p["project_recall"], p[project]), fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel("recall@10")
        ax.set_title(f"{title} (labels: efSearch / nprobe)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("queries/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    # python bench/plot_vectors.py [out.json [picture.png]]
    target = Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else PLOT
    plot(json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "out.json").read_text()), target)
    print(f"wrote {target}")
