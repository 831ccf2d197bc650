"""Eager vs ``compile: step`` (issue 34): steady-state img/s of one configuration per family on
the cifar-quick network (ResNet-18 CIFAR stem, batch 256, two 32 px views, data included), the
two modes timed in one process one after the other; and the compilation's own seconds.

    .venv/bin/python bench/compile_step.py [--device cpu|cuda] [--amp off|bf16] [--width 0.25]
        [--steps 10] [--families unigrad,byol] [--json OUT.json]

``--tiny`` (width 0.125, batch 32, 16 px, 2 steps) checks the script end to end in a minute.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from harness import machine, make_trainer, steady_state

#: one configuration per family (and stateful part)
FAMILIES = {
    "moco": {"method": "moco", "form": "loss"},
    "simclr": {"method": "simclr", "form": "loss"},
    "byol": {"method": "byol", "form": "loss"},
    "simsiam": {"method": "simsiam", "form": "loss"},
    "directpred": {"method": "directpred", "form": "grad", "variant": "d"},
    "barlow_twins": {"method": "barlow_twins", "form": "grad", "variant": "f"},
    "vicreg": {"method": "vicreg", "form": "loss"},
    "unigrad": {"method": "unigrad", "form": "grad"},
}
TINY = {"width": 0.125, "batch_size": 32, "image_size": 16, "proj_dim": 64}


def measure(over: dict, steps: int) -> dict:
    eager = make_trainer(**over, compile="off")
    eager_rate, _ = steady_state(eager, steps)
    del eager
    comp = make_trainer(**over, compile="step")
    torch._dynamo.utils.counters.clear()
    t0 = time.perf_counter()
    steady_state(comp, 1, warmup=2)  # the compilation (and its recompilation at step 2)
    compile_s = time.perf_counter() - t0
    step_rate, _ = steady_state(comp, steps, warmup=1)
    counters = torch._dynamo.utils.counters
    return {"eager": eager_rate, "step": step_rate, "ratio": step_rate / eager_rate,
            "compile_s": compile_s, "mode": comp.step_mode,
            "graphs": counters["stats"]["unique_graphs"],  # recompiles show here
            "cudagraph_skips": counters["inductor"]["cudagraph_skips"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="off", help="off (fp32) | bf16")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    base = {"device": a.device, "amp": a.amp, "width": a.width, "max_steps": 10_000}
    if a.tiny:
        base.update(TINY)
        a.steps = min(a.steps, 2)
    print(f"# {machine()}; {a.device}, amp {a.amp}, width {base['width']}, batch "
          f"{base.get('batch_size', 256)}, {a.steps} timed steps")  # fmt: skip
    print("| family | eager img/s | step img/s | step / eager | compile s | graphs | CUDA graph "
          "skips |\n|---|---|---|---|---|---|---|")  # fmt: skip
    rows = {}
    for fam in a.families.split(","):
        r = measure({**base, **FAMILIES[fam]}, a.steps)
        rows[fam] = r
        print(f"| {fam} | {r['eager']:.0f} | {r['step']:.0f} | {r['ratio']:.2f} | "
              f"{r['compile_s']:.0f} | {r['graphs']} | {r['cudagraph_skips']} |",
              flush=True)  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": machine(), "args": vars(a), "rows": rows},
                                           indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
