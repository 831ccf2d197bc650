"""``unigrad compare``: run a grid of pretraining runs and tabulate them like the paper."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from unigrad.cli import command
from unigrad.config import parse_set, shipped


@command("compare", "run a grid of methods/forms/targets/seeds under one protocol; write tables")
def _compare(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--grid",
        required=True,
        help=f"shipped grid ({', '.join(shipped('grids'))}) or a .yaml file",
    )
    p.add_argument("--data", help="ImageFolder root with train/ and val/")
    p.add_argument("--dataset", help="torchvision dataset instead of --data")
    p.add_argument(
        "--fallback-dataset",
        dest="fallback_dataset",
        help="torchvision dataset to download when --data does not exist",
    )
    p.add_argument("--out", required=True, help="grid directory (one sub-folder per run)")
    p.add_argument("--seeds", help="comma-separated seeds, replacing the grid's (and its runs')")
    p.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only the runs whose name contains NAME (repeatable)",
    )
    p.add_argument(
        "--linear-epochs",
        type=int,
        default=30,
        help="linear probe epochs on cached features after each run (0: kNN only)",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument(
        "--tabulate",
        action="store_true",
        help="train nothing: write the tables and report from the finished runs only",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    def run(a: argparse.Namespace) -> int:
        from unigrad.engine.trainer import Interrupted
        from unigrad.errors import UserError
        from unigrad.experiments import grid as C

        grid = C.load_grid(a.grid)
        if a.seeds:
            grid["seeds"] = [int(s) for s in a.seeds.split(",")]
            for r in grid.get("runs") or []:
                r.pop("seeds", None)
        out = Path(a.out)
        data_args = {
            k: getattr(a, k)
            for k in ("data", "dataset", "fallback_dataset")
            if getattr(a, k) is not None
        }
        extra = {"final_linear_epochs": a.linear_epochs, **parse_set(a.set or [])}
        runs = C.run_configs(grid, out, data_args, extra)
        if a.only:
            runs = [(s, c) for s, c in runs if any(o in s.run_id for o in a.only)]
            if not runs:
                raise UserError(
                    f"--only {' '.join(a.only)} matches no run of grid {a.grid}; "
                    "--dry-run without --only lists them"
                )
        if a.dry_run:
            for spec, cfg in runs:
                d = C.describe(cfg)
                print(
                    f"{spec.run_id:<28} {d['method']:<13} {d['form']:<5} {d['row']:<6} "
                    f"{d['target']:<13} lambda={d['balance']}"
                )
            return 0
        if not a.tabulate:  # --tabulate reads an existing grid directory
            out.mkdir(parents=True, exist_ok=True)
        # one random-init baseline per seed and backbone: taken from finished runs, else
        # evaluated by the first run of that seed (see compare.BASELINE_KEYS)
        baselines: dict[tuple, dict[str, float]] = {}
        for _, cfg in runs:
            if init := C.init_scores(C.load_result(Path(cfg.out)) or {}):
                baselines.setdefault(C.baseline_key(cfg), init)
        rows, done, missing = [], [], []
        for i, (spec, cfg) in enumerate(runs, 1):
            key = C.baseline_key(cfg)
            result = C.load_result(Path(cfg.out))  # now: another process may have finished it
            if result is None and a.tabulate:
                missing.append(spec.run_id)
                continue
            if result is None:
                print(f"[{i}/{len(runs)}] {spec.run_id}", flush=True)
                try:
                    result = _train(cfg, spec, first=key not in baselines, quiet=a.quiet)
                except Interrupted as e:
                    print(f"{e}; run the same command again to resume this grid", flush=True)
                    return 128 + e.signum
                C.save_result(Path(cfg.out), result)
                baselines.setdefault(key, C.init_scores(result))
            else:
                print(f"[{i}/{len(runs)}] {spec.run_id}: done, skipped", flush=True)
                if changed := C.stored_differences(cfg, Path(cfg.out)):
                    print(
                        f"warning: {spec.run_id} was trained with other settings than the grid "
                        f"now gives ({'; '.join(changed)}); its result is kept: delete "
                        f"{cfg.out} to rerun it",
                        file=sys.stderr,
                    )
            # the grid names its runs: a result copied in from another grid takes its name here
            names = {"run": spec.run_id, "group": spec.name, "rung": spec.rung, "base": spec.base}
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
        from unigrad.experiments.ladder import draw_ladder
        from unigrad.experiments.report import write_report

        report = write_report(done, out / "report")
        ladder = out / "report" / "ladder.png"
        if draw_ladder(rows, ladder):
            with open(report, "a") as f:
                f.write("\n### Budget ladder: kNN top-1 against the grid's rungs\n\n")
                f.write("![Budget ladder](ladder.png)\n")
        else:  # one from an earlier call would now be stale
            ladder.unlink(missing_ok=True)
        print(f"wrote {out / 'results.md'}, {out / 'results.csv'} and {out / 'report'}")
        return 0

    p.set_defaults(func=run)


def _train(cfg, spec, first: bool, quiet: bool) -> dict:
    """Train (or resume) one run and evaluate it; the row of results.csv."""
    import dataclasses

    from unigrad.engine.trainer import Trainer
    from unigrad.experiments import grid as C

    cfg = dataclasses.replace(cfg, knn_baseline=first)  # once per seed and backbone
    start = time.perf_counter()
    trainer = Trainer(cfg, resume=True, show_progress=not quiet)
    final = trainer.fit()
    diag = _last_diagnostics(Path(cfg.out))
    from unigrad.engine.device import host_label, precision_name

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


def _last_diagnostics(run_dir: Path) -> dict[str, float]:
    import csv
    import statistics

    last: dict[str, float] = {}
    speeds: list[float] = []
    with open(run_dir / "metrics.csv", newline="") as f:
        for r in csv.DictReader(f):
            last[r["name"]] = float(r["value"])
            if r["name"] == "img_per_s":
                speeds.append(float(r["value"]))
    if speeds:  # training throughput, the first window (warm-up, compilation) left out
        last["img_per_s_mean"] = round(statistics.mean(speeds[1:] or speeds), 1)
    return last
