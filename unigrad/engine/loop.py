"""The training loop: epochs of steps, and the callbacks' hooks around them. It holds no
periodic job itself (those are :mod:`unigrad.engine.callbacks`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from unigrad.core import dist
from unigrad.engine.callbacks import Callback

if TYPE_CHECKING:
    from unigrad.engine.trainer import Trainer


def run_loop(trainer: Trainer, callbacks: Sequence[Callback]) -> None:
    """Train from ``trainer.step`` to ``trainer.total_steps``.

    Every random draw is a function of (seed, step) (the data's ``augment_generator`` and
    ``cutmix_generator``, on its ``draw_device``), so a resumed run sees the same views.
    """
    spe = trainer.steps_per_epoch
    for cb in callbacks:
        cb.on_fit_start(trainer)
    try:
        while trainer.step < trainer.total_steps:
            epoch = trainer.step // spe
            for cb in callbacks:
                cb.on_epoch_start(trainer, epoch)
            for batch in trainer.data.epoch(epoch, trainer.step - epoch * spe):
                for cb in callbacks:
                    cb.on_batch(trainer, batch)
                gen = trainer.data.cutmix_generator(trainer.step)
                stats = trainer.train_step(batch.views, gen)
                n_images = batch.views[0].shape[0] * dist.world_size()
                for cb in callbacks:
                    cb.on_step(trainer, stats, n_images)
                if trainer.step >= trainer.total_steps:
                    break
            for cb in callbacks:
                cb.on_epoch_end(trainer)
    finally:
        for cb in callbacks:
            cb.on_fit_end(trainer)
