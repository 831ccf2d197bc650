"""Cost of the online linear probe (issue 36): img/s of the training step with the probe (its
forward hook on the backbone and its SGD step after every step) and without, on the
cifar-quick network (UniGrad, ResNet-18 width 0.25, batch 256, CIFAR-10), in one process,
rounds alternating so that drift in the machine's load falls on both; and the probe's scoring
on the eval split's (already extracted) features, the only work it adds at an epoch end.

    .venv/bin/python bench/probe_cost.py [--rounds 5] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch
from harness import machine, make_trainer

from unigrad.engine.callbacks.probe import OnlineProbeMonitor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5, help="rounds of (with, without)")
    ap.add_argument("--steps", type=int, default=20, help="steps per round and setting")
    ap.add_argument("--extract-only", action="store_true")
    a = ap.parse_args()
    tr = make_trainer()
    if a.extract_only:
        return extract(tr)
    cb = next((c for c in tr.callbacks() if isinstance(c, OnlineProbeMonitor)), None)
    assert cb is not None, "the probe needs CIFAR-10's labels and val split"
    bs, state = tr.cfg.batch_size, tr.loop_state
    it = tr.data.epoch(0, 0)

    def timed(n: int, probe: bool) -> float:
        if probe:
            cb.on_fit_start(state)  # the forward hook
        t = time.perf_counter()
        for _ in range(n):
            state.batch = next(it)
            if probe:
                cb.on_batch(state)
            state.stats = tr.train_step(state.batch.views, tr.data.cutmix_generator(tr.step))
            state.clock = tr.clock
            if probe:
                cb.on_step(state)
        elapsed = time.perf_counter() - t
        cb.on_fit_end(state)
        return n * bs / elapsed

    timed(2, True), timed(2, False)  # warm-up
    on, off = [], []
    for r in range(a.rounds):
        on.append(timed(a.steps, True))
        off.append(timed(a.steps, False))
        print(f"round {r}: with {on[-1]:.1f} img/s, without {off[-1]:.1f} img/s", flush=True)
    mean_on, mean_off = sum(on) / len(on), sum(off) / len(off)
    print(f"# {machine()}")
    print(f"steps: {2 * a.rounds * a.steps} (+4 warm-up), batch {bs}")
    print(f"with probe {mean_on:.1f} img/s, without {mean_off:.1f} img/s, ratio "
          f"{mean_on / mean_off:.4f} (cost {100 * (1 - mean_on / mean_off):.2f} %)")  # fmt: skip
    feats = torch.randn(10000, cb.probe.weight.shape[1])
    labels = torch.randint(0, cb.probe.weight.shape[0], (10000,))
    t = time.perf_counter()
    cb.probe.top1(feats, labels)
    print(f"scoring on 10000 eval features: {1000 * (time.perf_counter() - t):.1f} ms")


def extract(tr) -> None:
    """Seconds to extract the eval split's features (the probe's epoch-end work when the kNN
    monitor is off; with it on, the two share one extraction)."""
    bb = tr.model.encoder.backbone
    tr.eval_data.held_features(bb, tr.device)  # warm: decodes the split into memory once
    with torch.no_grad():
        next(bb.parameters()).mul_(1.0)  # an in-place change: the cached features are stale
    t = time.perf_counter()
    feats, _ = tr.eval_data.held_features(bb, tr.device)
    print(f"# {machine()}")
    print(f"eval split features ({len(feats)} images): {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
