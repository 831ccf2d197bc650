"""The training loop: epochs of steps, and the callbacks' hooks around them. It holds no
periodic job itself (those are :mod:`unigrad.engine.callbacks`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from unigrad.core import dist
from unigrad.data.pipeline import step_generator
from unigrad.engine.callbacks import Callback

if TYPE_CHECKING:
    from unigrad.engine.trainer import Trainer


def run_loop(trainer: Trainer, callbacks: Sequence[Callback]) -> None:
    """Train from ``trainer.step`` to ``trainer.total_steps``.

    Every random draw is a function of (seed, step): the augmentation's generator is
    ``step_generator(seed, step, per_rank=False)`` (the global batch's draws, sliced per rank),
    CutMix's ``step_generator(seed, step, salt=1)``, so a resumed run sees the same views.
    """
    seed, spe = trainer.cfg.seed, trainer.steps_per_epoch
    for cb in callbacks:
        cb.on_fit_start(trainer)
    try:
        while trainer.step < trainer.total_steps:
            epoch = trainer.step // spe
            for cb in callbacks:
                cb.on_epoch_start(trainer, epoch)
            augment_gen = lambda s: step_generator(seed, s, per_rank=False)  # noqa: E731
            for views in trainer.data.epoch(epoch, trainer.step - epoch * spe, augment_gen):
                stats = trainer.train_step(views, step_generator(seed, trainer.step, salt=1))
                n_images = views[0].shape[0] * dist.world_size()
                for cb in callbacks:
                    cb.on_step(trainer, stats, n_images)
                if trainer.step >= trainer.total_steps:
                    break
            for cb in callbacks:
                cb.on_epoch_end(trainer)
    finally:
        for cb in callbacks:
            cb.on_fit_end(trainer)
