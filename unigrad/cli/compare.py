"""``unigrad compare``: run a grid of pretraining runs and tabulate them like the paper.

Only the arguments are parsed here; :func:`unigrad.experiments.runner.compare` runs the grid."""

from __future__ import annotations

import argparse

from unigrad.cli import command
from unigrad.config import parse_set, shipped

#: Linear-probe epochs after each run unless --linear-epochs says otherwise.
LINEAR_EPOCHS = 30


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
        help=f"linear probe epochs on cached features after each run (0: kNN only; default "
        f"{LINEAR_EPOCHS}; with --tabulate: each run's own)",
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
        from unigrad.experiments.runner import compare

        extra = parse_set(a.set or [])  # --set wins over --linear-epochs
        unchecked: tuple[str, ...] = ()
        if a.linear_epochs is None and a.tabulate and "final_linear_epochs" not in extra:
            unchecked = ("final_linear_epochs",)  # the value each run was finished with
        elif a.linear_epochs is not None or not a.tabulate:
            epochs = LINEAR_EPOCHS if a.linear_epochs is None else a.linear_epochs
            extra = {"final_linear_epochs": epochs, **extra}
        data_args = {
            k: getattr(a, k)
            for k in ("data", "dataset", "fallback_dataset")
            if getattr(a, k) is not None
        }
        return compare(
            a.grid,
            a.out,
            data_args=data_args,
            extra=extra,
            seeds=[int(s) for s in a.seeds.split(",")] if a.seeds else None,
            only=a.only,
            dry_run=a.dry_run,
            tabulate=a.tabulate,
            quiet=a.quiet,
            unchecked=unchecked,
        )

    p.set_defaults(func=run)
