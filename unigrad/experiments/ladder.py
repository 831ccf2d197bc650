"""The budget-ladder figure of a grid whose ``product`` varies one numeric key (``epochs`` in
``grids/budget.yaml``): for each of the grid's runs, kNN top-1 (mean over seeds) against that
key, with the random-init backbone's level as a dashed line."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from unigrad.experiments.report import have_matplotlib


def ladder_axis(rows: list[dict[str, Any]]) -> str | None:
    """The product key the rows' rungs vary (``"epochs"`` for rungs ``epochs=4``, ``epochs=16``);
    None unless there are two rungs or more and each sets the same single numeric key."""
    rungs = {r.get("rung") or "" for r in rows}
    keys = set()
    for rung in rungs:
        key, _, value = rung.partition("=")
        try:
            float(value)
        except ValueError:
            return None
        keys.add(key)
    return keys.pop() if len(rungs) >= 2 and len(keys) == 1 else None


def draw_ladder(rows: list[dict[str, Any]], out: Path, metric: str = "knn_top1") -> bool:
    """Draw the ladder into ``out`` (a .png); False (nothing drawn) when the rows are not a
    ladder (:func:`ladder_axis`) or matplotlib is missing."""
    axis = ladder_axis(rows)
    if axis is None or not have_matplotlib():
        return False
    from matplotlib.figure import Figure

    series: dict[str, dict[float, list[float]]] = {}
    for r in rows:
        if r.get(metric) is not None:
            x = float(r["rung"].partition("=")[2])
            series.setdefault(r.get("base") or r["group"], {}).setdefault(x, []).append(r[metric])
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for i, (base, points) in enumerate(series.items()):
        xs = sorted(points)
        ax.plot(xs, [statistics.mean(points[x]) for x in xs], marker="o", color=f"C{i}", label=base)
    inits = sorted({r[f"init_{metric}"] for r in rows if r.get(f"init_{metric}") is not None})
    for j, level in enumerate(inits):
        label = "random-init backbone" if j == 0 else None
        ax.axhline(level, color="grey", linestyle="--", linewidth=1, label=label)
    ticks = sorted({x for points in series.values() for x in points})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
    ax.set_xlabel(axis)
    ax.set_ylabel(metric.replace("_top1", " top-1 (%)").replace("knn", "kNN"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return True
