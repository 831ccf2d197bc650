"""The loop's periodic jobs, one file each, and the one place where a run's are chosen.

A callback is a :class:`Callback` whose hooks the loop (:func:`unigrad.engine.loop.run_loop`)
calls with the :class:`LoopState` (the clock, the latest statistics, the parts; not the
trainer), whose step hooks run inside the step (after backward, after the optimiser step) and
whose ``state_dict`` the checkpoint carries; a new periodic job is a new file here (or in your
own code: ``Trainer(cfg, callbacks=[MyJob()])``) and, for the built-in ones, one line in
:func:`default_callbacks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from unigrad.engine.callbacks.base import Callback, LoopState
from unigrad.engine.callbacks.checkpointer import Checkpointer, Interrupted
from unigrad.engine.callbacks.diagnostics import Diagnostics
from unigrad.engine.callbacks.grad_norm import GradNormLog
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
    "GradNormLog",
    "Interrupted",
    "KnnMonitor",
    "LoopState",
    "MetricsLog",
    "OnlineProbeMonitor",
    "SpectrumWriter",
    "WandbLogger",
    "default_callbacks",
    "run_callbacks",
]


def default_callbacks(trainer: Trainer) -> list[Callback]:
    """The built-in jobs a run's configuration asks for, in the order the loop calls them:
    W&B, metrics (and the divergence check), diagnostics, the online probe, F's spectrum, the
    kNN monitor (the eval split's features are extracted once for the probe and it), and last
    the checkpoints (and stop requests), so that a checkpoint holds every callback's state after
    the step (the trainer puts the caller's callbacks before it)."""
    cfg = trainer.cfg
    chosen: list[Callback | None] = [
        WandbLogger() if cfg.wandb else None,
        MetricsLog(cfg.log_every, trainer.show_progress),
        Diagnostics(cfg.diag_every, cfg.probe_size) if cfg.diag_every else None,
        OnlineProbeMonitor.for_run(trainer),
        SpectrumWriter() if SpectrumWriter.applies(trainer) else None,
        KnnMonitor(cfg.knn_every) if cfg.knn_every else None,
        Checkpointer(cfg.ckpt_every, cfg.keep_epoch_ckpts, cfg.log_every),
    ]
    return [c for c in chosen if c is not None]


def run_callbacks(trainer: Trainer, extra: Sequence[Callback]) -> list[Callback]:
    """The run's callbacks: the built-in ones, the caller's ``extra``, and the checkpoints last,
    so that a checkpoint holds every other callback's state after the step."""
    defaults = default_callbacks(trainer)
    last = [c for c in defaults if isinstance(c, Checkpointer)]
    return [c for c in defaults if c not in last] + list(extra) + last
