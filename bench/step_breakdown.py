"""Where the time of one training step goes (default: UniGrad, ResNet-18 CIFAR stem, width 0.25,
batch 256, fast pipeline), the non-backbone share of the step, and the amortised cost of the
probe-batch diagnostics.

    .venv/bin/python bench/step_breakdown.py [--width 0.25] [--method unigrad] [--steps 10]
        [--diag-every 50] [--set KEY=VALUE ...]

``--set`` takes any config key, e.g. ``--set multi_crop=2x32,6x16 --set target=momentum``.
"""

from __future__ import annotations

import argparse
import time

from harness import machine, make_trainer

from unigrad.config import parse_set
from unigrad.engine.callbacks import Diagnostics
from unigrad.engine.profiling import SectionTimer

BACKBONE = ("online forward", "target forward", "backward")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="unigrad")
    ap.add_argument("--form", default=None)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--proj-dim", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--amp", default="auto")
    ap.add_argument("--diag-every", type=int, default=50, help="diagnostics interval to cost")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    tr = make_trainer(
        method=a.method,
        form=a.form,
        width=a.width,
        proj_dim=a.proj_dim,
        batch_size=a.batch_size,
        amp=a.amp,
        **parse_set(a.set),
    )
    timer = SectionTimer(tr.device)
    tr.timer = timer
    it = tr.data.epoch(0, 0)
    for _ in range(2):  # warm-up
        tr.train_step(next(it).views, tr.data.cutmix_generator(tr.step))
    timer.reset()
    start = time.perf_counter()
    for _ in range(a.steps):
        with timer("data + augmentation"):
            views = next(it).views
        tr.train_step(views, tr.data.cutmix_generator(tr.step))
    total = (time.perf_counter() - start) / a.steps
    sections = {k: v / a.steps for k, v in timer.totals.items()}
    print(f"# {machine()}")
    print(
        f"# {a.method}/{tr.objective.kind}, width {a.width}, C {a.proj_dim}, batch "
        f"{a.batch_size}, amp {tr.amp}, {a.steps} steps"
    )
    print(f"{'section':<22}{'ms/step':>10}{'share':>8}")
    for k, v in sorted(sections.items(), key=lambda kv: -kv[1]):
        print(f"{k:<22}{v * 1e3:>10.1f}{100 * v / total:>7.1f}%")
    other = total - sum(sections.values())
    print(f"{'(untimed)':<22}{other * 1e3:>10.1f}{100 * other / total:>7.1f}%")
    print(f"{'total':<22}{total * 1e3:>10.1f}   -> {a.batch_size / total:.0f} img/s")
    non_backbone = total - sum(sections.get(k, 0.0) for k in BACKBONE)
    print(f"non-backbone share of the step: {100 * non_backbone / total:.1f}%")
    obj = sections.get("loss + sample set", 0.0)
    print(f"loss + sample-set update share: {100 * obj / total:.2f}%")
    calls = 3  # the probe batch's forward passes + statistics, as the trainer runs them
    start = time.perf_counter()
    for _ in range(calls):
        Diagnostics(1, tr.cfg.probe_size).run(tr)
    diag = (time.perf_counter() - start) / calls
    print(
        f"diagnostics: {diag * 1e3:.1f} ms per call, every {a.diag_every} steps = "
        f"{100 * diag / (diag + a.diag_every * total):.2f}% of training time"
    )


if __name__ == "__main__":
    main()
