"""Reports of training runs: PNG plots (one line per run, like the paper's figure 2) and a
``report.md`` with a table of the final numbers.

A run is a folder with ``metrics.csv`` (long format ``step,epoch,name,value``), optionally
``config.yaml`` (for the legend: run name and method) and ``spectrum.csv`` (F's eigenvalues,
see :func:`unigrad.eval.diagnostics.write_spectrum`). Metrics a run lacks are skipped, and the
report says which. Figures use matplotlib's object API (Agg), never pyplot's global state.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unigrad.engine.files import check_writable, writing
from unigrad.errors import UserError
from unigrad.eval.diagnostics import SPECTRUM_FILE, read_spectrum

METRICS_FILE = "metrics.csv"
Series = list[tuple[int, float]]


@dataclass(frozen=True)
class Panel:
    """One axis: the first of ``metrics`` that a run has is its line."""

    ylabel: str
    metrics: tuple[str, ...]
    logy: bool = False


@dataclass(frozen=True)
class Plot:
    file: str
    title: str
    panels: tuple[Panel, ...]


PLOTS = (
    Plot("loss.png", "Training loss", (Panel("loss", ("loss",)),)),
    Plot(
        "similarity.png",
        "Positive / negative similarity",
        (
            Panel("positive cosine", ("diag/pos_cos", "pos_sim")),
            Panel("negative cosine", ("diag/neg_cos",)),
        ),
    ),
    Plot("knn.png", "kNN accuracy", (Panel("kNN top-1 (%)", ("knn_top1",)),)),
    Plot(
        "pc_ratio.png",
        "Principal component ratio (components to 90% of the variance) and RankMe",
        (Panel("components", ("diag/pc_ratio",)), Panel("RankMe", ("diag/rankme",))),
    ),
    Plot(
        "channel_std.png",
        "Per-channel std of the l2-normalised output (dashed: 1/sqrt(C))",
        (Panel("std", ("diag/channel_std",)),),
    ),
    Plot(
        "probe.png",
        "Online linear probe accuracy (eval split)",
        (Panel("linear top-1 (%)", ("probe/linear_top1",)),),
    ),
    Plot(
        "barlow_diag.png",
        "Barlow Twins diag(W)",
        (Panel("max diag(W)", ("diag/bt_diag_max",)), Panel("min diag(W)", ("diag/bt_diag_min",))),
    ),
    Plot("lambda_dyn.png", "DirectPred dynamic lambda", (Panel("lambda", ("diag/lambda_dyn",)),)),
    Plot(
        "prototypes.png",
        "Positive similarity and the prototypes' use (share of the K prototypes that are some "
        "sample's arg-max code)",
        (
            Panel("positive cosine (every logged step)", ("pos_sim",)),
            Panel("prototypes used", ("protos_used",)),
        ),
    ),
    Plot("lr.png", "Learning rate", (Panel("lr", ("lr",), logy=True),)),
)
FINAL_COLUMNS = (
    "loss",
    "diag/pos_cos",
    "diag/neg_cos",
    "knn_top1",
    "knn_top5",
    "probe/linear_top1",
    "diag/pc_ratio",
    "diag/rankme",
    "diag/channel_std",
)


@dataclass
class Run:
    path: Path
    label: str
    config: dict
    metrics: dict[str, Series]
    bad_rows: int = 0
    spectrum: dict = field(default_factory=dict)


def read_metrics(path: Path) -> tuple[dict[str, Series], int]:
    """``metrics.csv`` -> ({name: [(step, value)] sorted by step}, number of unreadable rows)."""
    out: dict[str, Series] = defaultdict(list)
    bad = 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"step", "name", "value"} <= set(reader.fieldnames or ()):
            raise UserError(
                f"{path} is not a metrics file: its header is {reader.fieldnames}, expected "
                "step,epoch,name,value (written by `unigrad pretrain`)"
            )
        for row in reader:
            try:
                out[row["name"]].append((int(float(row["step"])), float(row["value"])))
            except (TypeError, ValueError):  # a half-written last line, an empty field
                bad += 1
    return {k: sorted(v, key=lambda p: p[0]) for k, v in out.items()}, bad


def load_run(path: str | Path) -> Run:
    """Read one run folder (see the module docstring)."""
    path = Path(path)
    if not (path / METRICS_FILE).is_file():
        raise UserError(
            f"{path / METRICS_FILE} not found: pass run folders written by `unigrad pretrain` "
            f"(they hold {METRICS_FILE} and config.yaml)"
        )
    metrics, bad = read_metrics(path / METRICS_FILE)
    config: dict = {}
    if (path / "config.yaml").is_file():
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    method = config.get("method")
    label = path.resolve().name + (f" ({method})" if method else "")
    spectrum = read_spectrum(path / SPECTRUM_FILE) if (path / SPECTRUM_FILE).is_file() else {}
    return Run(path, label, config, metrics, bad, spectrum)


def _unique_labels(runs: list[Run]) -> None:
    """Runs with the same folder name get their parent folder's name in front."""
    seen = defaultdict(int)
    for r in runs:
        seen[r.label] += 1
    for r in runs:
        if seen[r.label] > 1:
            r.label = f"{r.path.resolve().parent.name}/{r.label}"


def _series(run: Run, panel: Panel) -> tuple[str, Series] | None:
    for name in panel.metrics:
        if run.metrics.get(name):
            return name, run.metrics[name]
    return None


_LEGEND_INSIDE_MAX = 8  # runs; more get one legend under the panels
_LEGEND_COLUMNS = 4
_STYLES = ("-", "--", ":", "-.")


def have_matplotlib() -> bool:
    """Whether the figures can be drawn (matplotlib is the optional extra ``unigrad[report]``)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _line_style(i: int, n: int) -> dict[str, Any]:
    """Colour and line style of run ``i`` of ``n``: the 10-colour cycle for up to 10 runs, then
    20 colours x 4 line styles, so that up to 80 runs are drawn distinctly."""
    from matplotlib import colormaps

    if n <= 10:
        return {"color": f"C{i}", "linestyle": "-"}
    return {"color": colormaps["tab20"](i % 20), "linestyle": _STYLES[i // 20 % len(_STYLES)]}


def draw_plot(plot: Plot, runs: list[Run], out: Path) -> tuple[bool, list[str]]:
    """Draw ``plot`` into ``out/plot.file`` when some run has one of its metrics.

    Returns:
        (whether it was drawn, notes on what is missing).
    """
    if not any(_series(r, p) for r in runs for p in plot.panels):
        names = ", ".join(f"`{m}`" for p in plot.panels for m in p.metrics)
        return False, [f"{plot.title}: not plotted, no run logged {names}"]
    from matplotlib.figure import Figure

    notes = []
    # many runs (a whole grid): one legend under the panels instead of one covering each panel
    shared = len(runs) > _LEGEND_INSIDE_MAX
    rows = math.ceil(len(runs) / _LEGEND_COLUMNS) if shared else 0
    fig = Figure(figsize=(5.5 * len(plot.panels), 4 + 0.2 * rows), layout="constrained")
    for ax, panel in zip(
        fig.subplots(1, len(plot.panels), squeeze=False)[0], plot.panels, strict=True
    ):
        for i, run in enumerate(runs):
            found = _series(run, panel)
            if found is None:
                notes.append(f"{plot.title}: {run.label} has no {' / '.join(panel.metrics)}")
                continue
            steps, values = zip(*found[1], strict=True)
            style = _line_style(i, len(runs))
            marker = "." if len(steps) < 30 else None
            ax.plot(steps, values, label=run.label, marker=marker, **style)
            if panel.metrics[0] == "diag/channel_std" and run.config.get("proj_dim"):
                ref = 1 / math.sqrt(run.config["proj_dim"])
                ax.axhline(ref, color=style["color"], linestyle="--", linewidth=0.8)
        ax.set(xlabel="step", ylabel=panel.ylabel, yscale="log" if panel.logy else "linear")
        ax.grid(alpha=0.3)
        if not shared and ax.get_legend_handles_labels()[0]:  # a panel no run has: none
            ax.legend(fontsize="small")
    if shared:
        handles = {}  # label -> line, over every panel (a run may miss a panel's metric)
        for ax in fig.axes:
            lines, labels = ax.get_legend_handles_labels()
            handles.update(zip(labels, lines, strict=True))
        fig.legend(
            handles.values(),
            handles.keys(),
            loc="outside lower center",
            ncol=_LEGEND_COLUMNS,
            fontsize="x-small",
        )
    fig.suptitle(plot.title)
    fig.savefig(out / plot.file, dpi=110)
    return True, notes


def draw_spectrum(runs: list[Run], out: Path, file: str = "spectrum.png") -> tuple[bool, list[str]]:
    """Eigenvalues of F by index (log scale): the last spectrum of each run, or for one run
    up to 5 spectra spread over training. Returns as :func:`draw_plot`."""
    have = [(i, r) for i, r in enumerate(runs) if r.spectrum]
    if not have:
        return False, [f"F spectrum: not plotted, no run has {SPECTRUM_FILE}"]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for i, run in have:
        steps = sorted(run.spectrum)
        if len(runs) == 1:
            picks = sorted({steps[round(j * (len(steps) - 1) / 4)] for j in range(5)})
            for j, s in enumerate(picks):
                ev = run.spectrum[s].clamp_min(1e-12)
                ax.plot(ev.numpy(), color=f"C{j}", label=f"{run.label} step {s}")
        else:
            ev = run.spectrum[steps[-1]].clamp_min(1e-12)
            ax.plot(ev.numpy(), label=f"{run.label} step {steps[-1]}", **_line_style(i, len(runs)))
    ax.set(xlabel="index", ylabel="eigenvalue of F", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.suptitle("Spectrum of the correlation matrix F")
    fig.savefig(out / file, dpi=110)
    return True, [f"F spectrum: {r.label} has no {SPECTRUM_FILE}" for r in runs if not r.spectrum]


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.4g}"


def final_table(runs: list[Run]) -> str:
    """Markdown table: per run, the last value of each FINAL_COLUMNS metric (and best kNN)."""
    cols = ["run", "last step", *FINAL_COLUMNS, "best knn_top1"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in runs:
        steps = [s for series in r.metrics.values() for s, _ in series[-1:]]
        last = [r.metrics[m][-1][1] if r.metrics.get(m) else None for m in FINAL_COLUMNS]
        knn = r.metrics.get("knn_top1")
        best = max(v for _, v in knn) if knn else None
        cells = [r.label, str(max(steps)) if steps else "–", *map(_fmt, last), _fmt(best)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Plots and ``report.md`` for the runs; into ``RUN/report`` (one run) or ``out``.

    Returns:
        the path of ``report.md``.
    """
    if not run_dirs:
        raise UserError("pass at least one run folder")
    if out is None and len(run_dirs) > 1:
        raise UserError("several runs: pass --out DIR for the combined report")
    runs = [load_run(p) for p in run_dirs]
    _unique_labels(runs)
    out = Path(out) if out is not None else Path(run_dirs[0]) / "report"
    check_writable(out, "--out", folder=True)
    with writing(out, "choose another --out"):
        path = _write(runs, out)
    return path


def _write(runs: list[Run], out: Path) -> Path:
    """report.md and its figures in ``out``; returns the path of report.md."""
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = [
        f"{r.label}: skipped {r.bad_rows} unreadable rows of {METRICS_FILE}"
        for r in runs
        if r.bad_rows
    ]
    md = [f"# Report: {', '.join(r.label for r in runs)}", ""]
    md += ["| run | folder | backbone | proj_dim | epochs |", "|---|---|---|---|---|"]
    for r in runs:
        c = r.config
        md.append(
            f"| {r.label} | `{r.path}` | {c.get('backbone', '–')} | {c.get('proj_dim', '–')} "
            f"| {c.get('epochs', '–')} |"
        )
    md += ["", "## Final numbers (last logged value)", "", final_table(runs), "", "## Plots", ""]
    figures = [(p.title, p.file, lambda p=p: draw_plot(p, runs, out)) for p in PLOTS]
    figures.append(("Spectrum of F", "spectrum.png", lambda: draw_spectrum(runs, out)))
    if not have_matplotlib():
        figures = []
        notes.append("figures skipped: matplotlib is not installed (pip install 'unigrad[report]')")
    for title, file, draw in figures:
        drawn, plot_notes = draw()
        notes += plot_notes
        if drawn:
            md += [f"### {title}", "", f"![{title}]({file})", ""]
        else:  # a figure from an earlier report would now be stale
            (out / file).unlink(missing_ok=True)
    if notes:
        md += ["## Missing or skipped", ""] + [f"- {n}" for n in notes] + [""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
