"""``compile: step`` against the eager step on the budget ladder's exact configuration, on the
device the bench is given (issue 44, items 1 and 4), then both timed in the same process.

Two trainers of the ladder run ``--run`` (its grid's preset and base, the run's overrides, the
data of ``--data``) start from the same seed and take the same views, one eager and one with the
step compiled; the relative L2 distance of all their float state (model, target, objective) is
measured after step 1 and step ``--steps``. Each then trains ``--time-steps`` more steps, timed
(data included, the device synchronised at both ends): the eager and the compiled step's img/s
and the compilation's seconds, which the GPU session's gate uses to decide whether a 64-epoch
run fits the time left. One compilation serves the check and the timing.

    python bench/step_agreement.py --device cuda --data DIR [--run unigrad-grad-64-s0]
        [--steps 5] [--time-steps 30] [--tol 1e-4] [--tiny] [--json OUT.json]

Exits 1 when the states differ by more than ``--tol`` after step 1 or are not finite, or when
the compiled trainer fell back from ``step``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from harness import machine

from unigrad.engine.callbacks import Callback, LoopState
from unigrad.engine.parts import RunParts
from unigrad.engine.trainer import Trainer
from unigrad.experiments.grid import load_grid, run_configs

#: --tiny: the ladder's configuration at a size that runs in seconds on a CPU
TINY = {"width": 0.125, "batch_size": 16, "proj_dim": 64, "proj_hidden": 64, "image_size": 16}


class Probe(Callback):
    """The run's float state after the steps in ``at`` (model, target, objective, flattened in
    fp64 on the CPU), and the wall clock after every step (the device synchronised first)."""

    def __init__(self, at: tuple[int, ...]) -> None:
        self.at = at
        self.states: dict[int, torch.Tensor] = {}
        self.clock: dict[int, float] = {}

    def on_step(self, loop: LoopState) -> None:
        if loop.device.type == "cuda":
            torch.cuda.synchronize(loop.device)
        self.clock[loop.step] = time.perf_counter()
        if loop.step in self.at:
            self.states[loop.step] = state(loop.parts)


def state(p: RunParts) -> torch.Tensor:
    """Every float tensor of the model, target and objective: [P] fp64 on the CPU."""
    parts = [p.model.state_dict(), p.target.state_dict(), p.objective.state_dict()]
    floats = [v for p in parts for v in p.values() if v.is_floating_point() and v.numel()]
    return torch.cat([v.detach().double().cpu().flatten() for v in floats])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||a||."""
    return float((a - b).norm() / a.norm().clamp_min(1e-30))


def grid_run_config(grid: dict[str, Any], run: str, out: Path, over: dict[str, Any]) -> Any:
    """The config of run ``run`` (e.g. ``swav-loss-s0``) of the loaded ``grid`` with ``over``
    (only the runs whose name starts ``run``'s are built); exits with one line if it has none."""
    grid["runs"] = [r for r in grid["runs"] if run.startswith(f"{r['name']}-")]
    found = [cfg for spec, cfg in run_configs(grid, out, {}, over) if spec.run_id == run]
    if not found:
        sys.exit(f"error: grid {grid['name']!r} has no run {run!r} (unigrad compare --grid "
                 f"{grid['name']} --dry-run lists them)")  # fmt: skip
    return found[0]


def ladder_config(run: str, data: str, out: Path, over: dict[str, Any]) -> Any:
    """The config of the budget grid's run ``run`` (e.g. ``unigrad-grad-64-s0``) with ``over``
    (the grid cut to that run's budget first: building all 16 configs costs seconds)."""
    grid = load_grid("budget")
    grid["product"] = {"epochs": [e for e in grid["product"]["epochs"] if f"-{e}-s" in run]}
    return grid_run_config(grid, run, out, {"data": data, **over})


def train(cfg: Any, steps: int, total: int) -> tuple[Trainer, Probe, float]:
    probe = Probe((0, 1, steps))
    tr = Trainer(cfg, show_progress=False, callbacks=[probe])
    probe.states[0] = state(tr.parts)
    t0 = time.perf_counter()
    tr.train()
    assert tr.step == total, f"trained {tr.step} steps, not {total}"
    return tr, probe, t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data", required=True, help="ImageFolder root with train/ and val/")
    ap.add_argument("--run", default="unigrad-grad-64-s0", help="a run of the budget grid")
    ap.add_argument("--amp", default=None, help="override the grid's amp (it pins off: fp32)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--time-steps", type=int, default=30)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    total = a.steps + a.time_steps
    over: dict[str, Any] = {"device": a.device, "max_steps": total, "knn_every": 0}
    over |= {"diag_every": 0, "tensorboard": False, "online_probe": False}
    over |= TINY if a.tiny else {}
    over |= {"amp": a.amp} if a.amp else {}
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("off", "step"):
            cfg = ladder_config(a.run, a.data, Path(tmp) / mode, {**over, "compile": mode})
            tr, probe, t0 = train(cfg, a.steps, total)
            timed = probe.clock[total] - probe.clock[a.steps]
            rows[mode] = {"probe": probe, "mode": tr.step_mode, "batch": cfg.batch_size,
                          "img_s": a.time_steps * cfg.batch_size / timed,
                          "first_steps_s": probe.clock[2] - t0,
                          "steps_per_epoch": tr.data.steps_per_epoch}  # fmt: skip
            tr.close()
    eager, step = rows["off"], rows["step"]
    st_e, st_s = eager["probe"].states, step["probe"].states
    dist = {k: rel(st_e[k], st_s[k]) for k in (0, 1, a.steps)}
    finite = all(bool(torch.isfinite(x).all()) for x in [*st_e.values(), *st_s.values()])
    step_s = 1 / step["img_s"] * step["batch"]
    compile_s = step["first_steps_s"] - 2 * step_s  # the first two steps less two steady ones
    ok = finite and step["mode"] == "step" and dist[0] == 0.0 and dist[1] < a.tol
    out = {"machine": machine(), "run": a.run, "device": a.device, "tiny": a.tiny,
           "rel_state": {str(k): v for k, v in dist.items()}, "tol_step1": a.tol,
           "finite": finite, "step_mode": step["mode"], "ok": ok,
           "eager_img_s": eager["img_s"], "step_img_s": step["img_s"],
           "compile_s": compile_s, "batch_size": step["batch"],
           "steps_per_epoch": step["steps_per_epoch"], "timed_steps": a.time_steps}  # fmt: skip
    print(f"# {out['machine']}\n# {a.run} on {a.device}: compiled vs eager, same seed and views")
    print(
        f"relative state distance: init {dist[0]:.1e}, step 1 {dist[1]:.2e}, step {a.steps} "
        f"{dist[a.steps]:.2e} (ok: step 1 < {a.tol:g}; finite {finite}; mode {step['mode']})"
    )
    print(
        f"img/s over {a.time_steps} steps: eager {eager['img_s']:.0f}, step "
        f"{step['img_s']:.0f} ({step['img_s'] / eager['img_s']:.2f}x); compile ~{compile_s:.0f} s"
    )
    print("ok" if ok else "FAIL")  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
