"""Two runs of a grid that differ only in their form (loss vs a gradient form), side by side
from the same seed and views through the real Trainer: how far apart their states are after
each of the first steps (BENCHMARKS §11).

In a fp32 run the round-off grows with every step, and this says how fast, next to a pair of
table2 for comparison. ``--float64`` runs both trainers in float64 (model, target, objective and
optimiser state converted, their inputs cast): what is left apart then is not round-off but a
difference of the maths somewhere on the trainer's path. ``--perturb EPS`` scales run B's
initial weights by 1 + EPS * N(0, 1) elementwise: a run against itself with that start
(``moco-loss-s0,moco-loss-s0``) says how fast the training alone parts two trajectories that
begin a round-off apart.

    python bench/form_agreement.py --data DIR protos:swav-loss-s0,swav-grad-s0 \\
        table2:moco-loss-s0,a-moco-grad-s0 [--steps 20] [--tiny] [--float64] [--perturb EPS]
        [--set K=V]...
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from harness import CIFAR, machine
from step_agreement import TINY, Probe, grid_run_config, rel, state

from unigrad.config import parse_set
from unigrad.engine.trainer import Trainer
from unigrad.experiments.grid import load_grid

AT = (1, 2, 5, 10, 20, 50, 100)


def overrides(data: str, steps: int, tiny: bool) -> dict[str, Any]:
    """What both runs of a pair change in their grid's config: ``steps`` steps on ``data``, no
    periodic evaluation, diagnostics, TensorBoard or online probe, eager, fp32 (as both grids
    are); the tiny network of ``step_agreement`` with ``tiny``."""
    over: dict[str, Any] = {"data": data, "max_steps": steps, "knn_every": 0, "diag_every": 0}
    over |= {"tensorboard": False, "online_probe": False, "compile": "off", "amp": "off"}
    return over | (TINY if tiny else {})


def _f64(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return type(x)(_f64(v) for v in x)
    return x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def in_float64(tr: Trainer) -> None:
    """Convert ``tr``'s model, target, objective and optimiser state to float64 in place (the
    optimiser keeps the same parameter objects) and cast what the model and target are given."""
    for m in (tr.parts.model, tr.parts.target, tr.parts.objective):
        m.double()
    for st in tr.parts.optimizer.state.values():
        st.update({k: _f64(v) for k, v in st.items()})
    for m in (tr.parts.model, tr.parts.target):
        m.register_forward_pre_hook(lambda _m, args: _f64(args))


def perturb(tr: Trainer, eps: float) -> None:
    """Scale every model weight by 1 + eps * N(0, 1), elementwise (a fixed generator)."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in tr.parts.model.parameters():
            p.mul_(1 + eps * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p))


def states(cfg: Any, at: tuple[int, ...], float64: bool, eps: float) -> dict[int, Any]:
    probe = Probe(at)
    tr = Trainer(cfg, show_progress=False, callbacks=[probe])
    if float64:
        in_float64(tr)
    if eps:
        perturb(tr, eps)
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
    ap.add_argument("--float64", action="store_true", help="both trainers in float64")
    ap.add_argument("--perturb", type=float, default=0.0, metavar="EPS", help="B's start")
    ap.add_argument("--set", action="append", default=[], metavar="K=V", help="override both runs")
    a = ap.parse_args()
    at = tuple(s for s in AT if s <= a.steps)
    over = overrides(a.data, a.steps, a.tiny) | parse_set(a.set)
    dtype = "float64" if a.float64 else "fp32"
    print(f"# {machine()}; {dtype}; B's weights x (1 + {a.perturb:g} N(0, 1)); relative "
          "distance ||a - b|| / ||a|| of all float state")  # fmt: skip
    print("pair".ljust(44) + "".join(f"step {s}".rjust(11) for s in (0, *at)))
    for pair in a.pairs:
        grid_name, runs = pair.split(":")
        run_a, run_b = runs.split(",")
        with tempfile.TemporaryDirectory() as tmp:
            sa, sb = (
                states(grid_run_config(load_grid(grid_name), run, Path(tmp) / ab, over), at,
                       a.float64, eps)
                for ab, run, eps in (("a", run_a, 0.0), ("b", run_b, a.perturb))
            )  # fmt: skip
        row = "".join(f"{rel(sa[s], sb[s]):11.2e}" for s in (0, *at))
        print(f"{run_a} vs {run_b}".ljust(44) + row, flush=True)


if __name__ == "__main__":
    main()
