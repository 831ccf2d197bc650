"""Step statistics: averaged over ``log_every`` steps into ``metrics.csv`` / TensorBoard, shown
on the progress bar, and checked for divergence."""

from __future__ import annotations

import math
import time

import torch
from tqdm import tqdm

from unigrad.engine.callbacks.base import Callback, LoopState

SHOWN = ("loss", "pos_sim", "lr", "img_per_s")
#: Metrics logged by other jobs, shown with their last value (bar label: metric name).
SHOWN_LATEST = {"probe/linear_top1": "probe"}


class MetricsLog(Callback):
    """Means of the step statistics every ``log_every`` steps (and at the last step), with lr,
    EMA momentum, img/s and, when it grew, ``data/skipped_images``; between those boundaries
    nothing is read from the device. A non-finite loss (the step's device flag) or mean stops
    the run (exit 3)."""

    def __init__(self, log_every: int, show_progress: bool = True) -> None:
        self.log_every = log_every
        self.show_progress = show_progress
        self.window: dict[str, list[torch.Tensor]] = {}
        self.bar: tqdm | None = None
        self.t0, self.n_img = time.perf_counter(), 0
        self.skipped = 0  # unreadable training images logged so far

    def on_fit_start(self, state: LoopState) -> None:
        self.skipped = state.data.skipped  # what the run's start logged
        self.bar = tqdm(
            total=state.total_steps,
            initial=state.step,
            disable=not self.show_progress,
            unit="step",
            dynamic_ncols=True,
            desc=f"{state.cfg.method}/{state.parts.objective.kind}",
        )

    def on_epoch_start(self, state: LoopState) -> None:
        self.t0, self.n_img = time.perf_counter(), 0  # evaluation time is not throughput

    def on_step(self, state: LoopState) -> None:
        for k, v in state.stats.items():
            self.window.setdefault(k, []).append(v)
        self.n_img += state.n_images
        if self.bar is not None:
            self.bar.update(1)
        if state.step % self.log_every == 0 or state.step == state.total_steps:
            logged = self.flush(state, self.n_img / (time.perf_counter() - self.t0))
            if self.bar is not None:
                shown = {k: f"{logged[k]:.3g}" for k in SHOWN if k in logged}
                latest = state.log.latest if state.log is not None else {}
                shown |= {b: f"{latest[k]:.3g}" for k, b in SHOWN_LATEST.items() if k in latest}
                self.bar.set_postfix(shown)
            self.window, self.t0, self.n_img = {}, time.perf_counter(), 0

    def flush(self, state: LoopState, img_s: float) -> dict[str, float]:
        parts = state.parts
        means = {k: float(torch.stack(v).float().mean()) for k, v in self.window.items()}
        bad = [k for k, v in means.items() if not math.isfinite(v)]
        if parts.take_nonfinite() and "loss" not in bad:
            bad.insert(0, "loss")
        if bad:
            state.diverged(", ".join(bad), f" (within the last {self.log_every} steps)")
        if parts.objective.kind == "grad":
            means.pop("loss", None)  # the surrogate's value carries no meaning
        means["lr"] = parts.lr[state.step - 1]
        means["momentum"] = parts.momentum[state.step - 1]
        means["img_per_s"] = img_s
        if state.data.skipped != self.skipped:  # a folder's files are met as epochs go
            self.skipped = state.data.skipped
            means["data/skipped_images"] = float(self.skipped)
        state.log_metrics(means)
        return means

    def on_fit_end(self, state: LoopState) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
