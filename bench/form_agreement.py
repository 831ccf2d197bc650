"""Two runs of a grid that differ only in their form (loss vs a gradient form), side by side
from the same seed and views through the real Trainer: how far apart their states are after
each of the first steps (BENCHMARKS §11).

In float64 the forms agree to round-off over many steps (``tests/test_swav_dino.py``,
``tests/test_equivalence.py``); in a fp32 run the round-off grows with every step, and this
says how fast, next to a pair of table2 for comparison.

    python bench/form_agreement.py --data DIR protos:swav-loss-s0,swav-grad-s0 \\
        table2:moco-loss-s0,a-moco-grad-s0 [--steps 20] [--tiny]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from harness import CIFAR, machine
from step_agreement import TINY, Probe, grid_run_config, rel, state

from unigrad.engine.trainer import Trainer
from unigrad.experiments.grid import load_grid

AT = (1, 2, 5, 10, 20, 50, 100)


def states(cfg: Any, at: tuple[int, ...]) -> dict[int, Any]:
    probe = Probe(at)
    tr = Trainer(cfg, show_progress=False, callbacks=[probe])
    probe.states[0] = state(tr.parts)
    tr.train()
    tr.close()
    return probe.states


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", nargs="+", help="GRID:RUN_A,RUN_B (same seed, forms differ)")
    ap.add_argument("--data", default=str(CIFAR))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tiny", action="store_true", help="a network that runs in seconds")
    a = ap.parse_args()
    at = tuple(s for s in AT if s <= a.steps)
    over: dict[str, Any] = {"data": a.data, "max_steps": a.steps, "knn_every": 0}
    over |= {"diag_every": 0, "tensorboard": False, "online_probe": False, "compile": "off"}
    over |= {"amp": "off"}  # both grids are fp32
    over |= TINY if a.tiny else {}
    print(f"# {machine()}; relative distance ||a - b|| / ||a|| of all float state")
    print("pair".ljust(44) + "".join(f"step {s}".rjust(11) for s in (0, *at)))
    for pair in a.pairs:
        grid_name, runs = pair.split(":")
        run_a, run_b = runs.split(",")
        with tempfile.TemporaryDirectory() as tmp:
            sa = states(grid_run_config(load_grid(grid_name), run_a, Path(tmp) / "a", over), at)
            sb = states(grid_run_config(load_grid(grid_name), run_b, Path(tmp) / "b", over), at)
        row = "".join(f"{rel(sa[s], sb[s]):11.2e}" for s in (0, *at))
        print(f"{run_a} vs {run_b}".ljust(44) + row, flush=True)


if __name__ == "__main__":
    main()
