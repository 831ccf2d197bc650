"""Diagnostics on a fixed probe batch every ``diag_every`` steps (positive / negative cosine,
principal components, channel std, F's extreme eigenvalues: :mod:`unigrad.eval.diagnostics`)."""

from __future__ import annotations

from typing import Any

import torch

from unigrad.engine.callbacks.base import Callback, LoopState


class Diagnostics(Callback):
    """Logs ``diag/<name>`` for the probe batch of ``probe_size`` images every ``every`` steps."""

    def __init__(self, every: int, probe_size: int) -> None:
        self.every, self.probe_size = every, probe_size

    def on_step(self, state: LoopState) -> None:
        if state.step % self.every == 0:
            self.run(state)

    def run(self, state: LoopState) -> None:
        from unigrad.eval.diagnostics import frozen_bn_stats, probe_diagnostics

        parts = state.parts
        views = state.data.probe(self.probe_size)
        with torch.no_grad(), frozen_bn_stats(parts.model):
            z, _ = parts.model(views[:2])
            t = parts.target(views[:2], z)
        extra: dict[str, Any] = {}
        corr = getattr(parts.objective, "corr", None)
        if corr is not None:
            extra["corr"] = corr.F
        metrics = probe_diagnostics(z, t.pos, extra)
        state.log_metrics({f"diag/{k}": v for k, v in metrics.items()})
