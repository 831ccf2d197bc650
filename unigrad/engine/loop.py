"""The training loop: epochs of steps, and the callbacks' hooks around them. It holds no
periodic job itself (those are :mod:`unigrad.engine.callbacks`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from unigrad.core import dist
from unigrad.engine.callbacks import Callback
from unigrad.engine.callbacks.base import step_hooks

if TYPE_CHECKING:
    from unigrad.engine.trainer import Trainer


def run_loop(trainer: Trainer, callbacks: Sequence[Callback]) -> None:
    """Train from ``trainer.step`` to ``trainer.total_steps``.

    The callbacks see ``trainer.loop_state`` (its clock and statistics kept current here);
    their step hooks join ``parts.hooks`` for the loop's duration. Every random draw is a
    function of (seed, step) (the data's ``augment_generator`` and ``cutmix_generator``, on its
    ``draw_device``), so a resumed run sees the same views.
    """
    spe = trainer.steps_per_epoch
    state, hooks = trainer.loop_state, trainer.parts.hooks
    state.clock, state.log, state.total_steps = trainer.clock, trainer.log, trainer.total_steps
    added = [(getattr(hooks, at), fn) for cb in callbacks for at, fn in step_hooks(cb).items()]
    for actions, fn in added:
        actions.append(fn)
    try:
        for cb in callbacks:
            cb.on_fit_start(state)
        while trainer.step < trainer.total_steps:
            for cb in callbacks:
                cb.on_epoch_start(state)
            epoch = trainer.step // spe
            for batch in trainer.data.epoch(epoch, trainer.step - epoch * spe):
                state.batch = batch
                for cb in callbacks:
                    cb.on_batch(state)
                gen = trainer.data.cutmix_generator(trainer.step)
                state.stats = trainer.train_step(batch.views, gen)
                state.n_images = batch.views[0].shape[0] * dist.world_size()
                state.clock = trainer.clock
                for cb in callbacks:
                    cb.on_step(state)
                if trainer.step >= trainer.total_steps:
                    break
            for cb in callbacks:
                cb.on_epoch_end(state)
    finally:
        for cb in callbacks:
            cb.on_fit_end(state)
        for actions, fn in added:
            actions.remove(fn)
