"""The loop's periodic jobs, one file each, and the one place where a run's are chosen.

A callback is a :class:`Callback` whose hooks the loop (:func:`unigrad.engine.loop.run_loop`)
calls with the :class:`~unigrad.engine.trainer.Trainer`; a new periodic job is a new file here
(or in your own code: ``Trainer(cfg, callbacks=[MyJob()])``) and, for the built-in ones, one line
in :func:`default_callbacks`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unigrad.engine.callbacks.base import Callback
from unigrad.engine.callbacks.checkpointer import Checkpointer, Interrupted
from unigrad.engine.callbacks.diagnostics import Diagnostics
from unigrad.engine.callbacks.knn import KnnMonitor
from unigrad.engine.callbacks.metrics import MetricsLog
from unigrad.engine.callbacks.probe import OnlineProbeMonitor
from unigrad.engine.callbacks.spectrum import SpectrumWriter
from unigrad.engine.callbacks.wandb_log import WandbLogger

if TYPE_CHECKING:
    from unigrad.engine.trainer import Trainer

__all__ = [
    "Callback",
    "Checkpointer",
    "Diagnostics",
    "Interrupted",
    "KnnMonitor",
    "MetricsLog",
    "OnlineProbeMonitor",
    "SpectrumWriter",
    "WandbLogger",
    "default_callbacks",
]


def default_callbacks(trainer: Trainer) -> list[Callback]:
    """The built-in jobs a run's configuration asks for, in the order the loop calls them:
    W&B, metrics (and the divergence check), diagnostics, the online probe (before the
    checkpoints, which hold its state after the step), checkpoints (and stop signals), F's
    spectrum, the kNN monitor (the eval split's features are extracted once for both)."""
    cfg = trainer.cfg
    chosen: list[Callback | None] = [
        WandbLogger() if cfg.wandb else None,
        MetricsLog(cfg.log_every, trainer.show_progress),
        Diagnostics(cfg.diag_every, cfg.probe_size) if cfg.diag_every else None,
        OnlineProbeMonitor() if OnlineProbeMonitor.applies(trainer) else None,
        Checkpointer(cfg.ckpt_every, cfg.keep_epoch_ckpts, cfg.log_every),
        SpectrumWriter() if SpectrumWriter.applies(trainer) else None,
        KnnMonitor(cfg.knn_every) if cfg.knn_every else None,
    ]
    return [c for c in chosen if c is not None]
