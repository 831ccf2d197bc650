"""Running a grid (``unigrad compare``): one run after another, finished runs skipped, an
interrupted one resumed, the random-init baseline evaluated once per seed and backbone, and the
tables, report and budget ladder rewritten after each run.

The grid file, its expansion into runs and the tables are in :mod:`unigrad.experiments.grid`;
this module trains and orchestrates. :func:`run_grid` is the whole command.
"""

from __future__ import annotations

import csv
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from unigrad.errors import UserError
from unigrad.experiments import grid as C

Runs = list[tuple[C.RunSpec, Any]]


def select_runs(
    grid_name: str,
    out: Path,
    *,
    data_args: dict[str, Any],
    extra: dict[str, Any],
    seeds: list[int] | None = None,
    only: list[str] | None = None,
) -> Runs:
    """The runs of grid ``grid_name`` (a shipped name or a file), each with its config.

    Args:
        data_args: ``data`` / ``dataset`` / ``fallback_dataset`` given for every run.
        extra: config overrides for every run (applied after the grid's).
        seeds: replace the grid's seeds and every run's own.
        only: keep the runs whose name contains one of these.

    Raises:
        UserError: an invalid grid or run config, or ``only`` matching no run.
    """
    grid = C.load_grid(grid_name)
    if seeds:
        grid["seeds"] = list(seeds)
        for r in grid.get("runs") or []:
            r.pop("seeds", None)
    runs = C.run_configs(grid, out, data_args, extra)
    if only:
        runs = [(s, c) for s, c in runs if any(o in s.run_id for o in only)]
        if not runs:
            raise UserError(
                f"--only {' '.join(only)} matches no run of grid {grid_name}; "
                "--dry-run without --only lists them"
            )
    return runs


def print_runs(runs: Runs) -> None:
    """One line per run: name, method, form, Table 2 row, target, balance factor."""
    for spec, cfg in runs:
        d = C.describe(cfg)
        print(
            f"{spec.run_id:<28} {d['method']:<13} {d['form']:<5} {d['row']:<6} "
            f"{d['target']:<13} lambda={d['balance']}"
        )


def last_diagnostics(run_dir: Path) -> dict[str, float]:
    """The last value of each metric in ``run_dir/metrics.csv``, and ``img_per_s_mean``: the
    mean training throughput without its first window (warm-up, compilation)."""
    last: dict[str, float] = {}
    speeds: list[float] = []
    with open(run_dir / "metrics.csv", newline="") as f:
        for r in csv.DictReader(f):
            last[r["name"]] = float(r["value"])
            if r["name"] == "img_per_s":
                speeds.append(float(r["value"]))
    if speeds:
        last["img_per_s_mean"] = round(statistics.mean(speeds[1:] or speeds), 1)
    return last


def train_run(cfg: Any, spec: C.RunSpec, first: bool, quiet: bool) -> dict[str, Any]:
    """Train (or resume) one run and evaluate it (with the random-init baseline when ``first``
    of its seed and backbone); the row of ``results.csv``.

    Raises:
        Interrupted: the run was stopped by a signal (its checkpoint is written).
    """
    from unigrad.engine.device import host_label, precision_name
    from unigrad.engine.trainer import Trainer

    cfg = dataclasses.replace(cfg, knn_baseline=first)  # once per seed and backbone
    start = time.perf_counter()
    trainer = Trainer(cfg, resume=True, show_progress=not quiet)
    final = trainer.fit()
    diag = last_diagnostics(Path(cfg.out))
    return {
        "run": spec.run_id,
        "group": spec.name,
        "seed": spec.seed,
        **C.describe(cfg),
        **final,
        "final_pos_sim": diag.get("pos_sim"),
        "final_channel_std": diag.get("diag/channel_std"),
        "wall_s": round(time.perf_counter() - start, 1),
        "img_per_s": diag.get("img_per_s_mean"),
        "precision": precision_name(trainer.amp),
        "host": host_label(trainer.device),
    }


def known_baselines(runs: Runs) -> dict[tuple[Any, ...], dict[str, float]]:
    """The random-init scores already measured by finished runs, by :func:`grid.baseline_key`."""
    baselines: dict[tuple[Any, ...], dict[str, float]] = {}
    for _, cfg in runs:
        if init := C.init_scores(C.load_result(Path(cfg.out)) or {}):
            baselines.setdefault(C.baseline_key(cfg), init)
    return baselines


def _warn_if_changed(spec: C.RunSpec, cfg: Any, unchecked: tuple[str, ...]) -> None:
    if changed := C.stored_differences(cfg, Path(cfg.out), unchecked):
        print(
            f"warning: {spec.run_id} was trained with other settings than the grid "
            f"now gives ({'; '.join(changed)}); its result is kept: delete "
            f"{cfg.out} to rerun it",
            file=sys.stderr,
        )


def write_report_files(out: Path, rows: list[dict[str, Any]], done: list[str]) -> None:
    """``out/report`` of the finished runs, with the budget ladder when the grid has one (a
    stale ladder from an earlier call is removed)."""
    from unigrad.experiments.ladder import draw_ladder
    from unigrad.experiments.report import write_report

    report = write_report(done, out / "report")
    ladder = out / "report" / "ladder.png"
    if draw_ladder(rows, ladder):
        with open(report, "a") as f:
            f.write("\n### Budget ladder: kNN top-1 against the grid's rungs\n\n")
            f.write("![Budget ladder](ladder.png)\n")
    else:
        ladder.unlink(missing_ok=True)


def run_grid(
    runs: Runs,
    out: Path,
    *,
    tabulate: bool = False,
    quiet: bool = False,
    unchecked: tuple[str, ...] = (),
) -> int:
    """Train every unfinished run of ``runs`` (skipping finished ones, resuming interrupted
    ones), then write ``results.csv``, ``results.md`` (after each run) and the report.

    One random-init baseline per seed and backbone: taken from finished runs, else evaluated
    by the first run of that seed (see :data:`grid.BASELINE_KEYS`). ``tabulate``: train
    nothing, tabulate the finished runs and name the missing ones.

    Returns:
        the exit status: 0, or 128 + signal when a run was interrupted.

    Raises:
        UserError: ``tabulate`` and no run has finished.
    """
    from unigrad.engine.trainer import Interrupted

    if not tabulate:  # --tabulate reads an existing grid directory
        out.mkdir(parents=True, exist_ok=True)
    baselines = known_baselines(runs)
    rows, done, missing = [], [], []
    for i, (spec, cfg) in enumerate(runs, 1):
        key = C.baseline_key(cfg)
        result = C.load_result(Path(cfg.out))  # now: another process may have finished it
        if result is None and tabulate:
            missing.append(spec.run_id)
            continue
        if result is None:
            print(f"[{i}/{len(runs)}] {spec.run_id}", flush=True)
            try:
                result = train_run(cfg, spec, first=key not in baselines, quiet=quiet)
            except Interrupted as e:
                print(f"{e}; run the same command again to resume this grid", flush=True)
                return 128 + e.signum
            C.save_result(Path(cfg.out), result)
            baselines.setdefault(key, C.init_scores(result))
        else:
            print(f"[{i}/{len(runs)}] {spec.run_id}: done, skipped", flush=True)
            _warn_if_changed(spec, cfg, unchecked)
        # the grid names its runs: a result copied in from another grid takes its name here
        names = {"run": spec.run_id, "group": spec.name, "rung": spec.rung, "base": spec.base}
        names["twin"] = C.twin_key(spec)
        rows.append(
            {**baselines.get(key, {}), **result, **names, "backbone": C.backbone_label(cfg)}
        )
        done.append(cfg.out)
        C.write_results(out, rows)
    if missing:
        print(
            f"--tabulate: {len(missing)} of {len(runs)} runs not finished, left out of the "
            f"tables: {', '.join(missing)}",
            file=sys.stderr,
        )
    if not rows:
        raise UserError(f"--tabulate: no run of this grid has finished in {out}")
    if warning := C.mixed_precision_warning(rows):
        print(f"warning: {warning}", file=sys.stderr)
    write_report_files(out, rows, done)
    print(f"wrote {out / 'results.md'}, {out / 'results.csv'} and {out / 'report'}")
    return 0


def compare(
    grid_name: str,
    out: str | Path,
    *,
    data_args: dict[str, Any],
    extra: dict[str, Any],
    seeds: list[int] | None = None,
    only: list[str] | None = None,
    dry_run: bool = False,
    tabulate: bool = False,
    quiet: bool = False,
    unchecked: tuple[str, ...] = (),
) -> int:
    """``unigrad compare``: :func:`select_runs`, then list them (``dry_run``) or
    :func:`run_grid` (``unchecked``: settings a finished run keeps as it has them, unnamed).
    Returns the exit status."""
    out = Path(out)
    runs = select_runs(grid_name, out, data_args=data_args, extra=extra, seeds=seeds, only=only)
    if dry_run:
        print_runs(runs)
        return 0
    return run_grid(runs, out, tabulate=tabulate, quiet=quiet, unchecked=unchecked)
