"""Diagnostics on a fixed probe batch every ``diag_every`` steps (positive / negative cosine,
principal components, channel std, F's extreme eigenvalues: :mod:`unigrad.eval.diagnostics`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from unigrad.engine.callbacks.base import Callback

if TYPE_CHECKING:
    from unigrad.engine.trainer import Trainer


class Diagnostics(Callback):
    """Logs ``diag/<name>`` for the probe batch of ``probe_size`` images every ``every`` steps."""

    def __init__(self, every: int, probe_size: int) -> None:
        self.every, self.probe_size = every, probe_size

    def on_step(self, trainer: Trainer, stats: dict[str, torch.Tensor], n_images: int) -> None:
        if trainer.step % self.every == 0:
            self.run(trainer)

    def run(self, trainer: Trainer) -> None:
        from unigrad.eval.diagnostics import frozen_bn_stats, probe_diagnostics

        views = trainer.data.probe(self.probe_size)
        with torch.no_grad(), frozen_bn_stats(trainer.model):
            z, _ = trainer.model(views[:2])
            t = trainer.target(views[:2], z)
        extra: dict[str, Any] = {}
        corr = getattr(trainer.objective, "corr", None)
        if corr is not None:
            extra["corr"] = corr.F
        metrics = probe_diagnostics(z, t.pos, extra)
        trainer.log_metrics({f"diag/{k}": v for k, v in metrics.items()})
