"""The callback interface of the training loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from unigrad.data.pipeline import Batch
    from unigrad.engine.trainer import Trainer


class Callback:
    """A periodic job of the loop; every hook is optional (the defaults do nothing).

    The loop calls, with the trainer (``trainer.step`` is the number of steps done):
    ``on_fit_start`` once; ``on_epoch_start(epoch)`` before an epoch's first step (also on a
    resume mid-epoch); ``on_batch(batch)`` before every step, with the
    :class:`~unigrad.data.pipeline.Batch` it trains on (its views and, where the data has them,
    labels); ``on_step(stats, n_images)`` after every step, with the step's statistics
    as device tensors (``loss``, ``pos_sim``, ...; convert them only at your own boundaries, so
    the step need not wait for the device) and the images of the global batch;
    ``on_epoch_end`` after an epoch's last step (and after the run's last step); ``on_fit_end``
    once, also when the loop stops with an exception.
    """

    def on_fit_start(self, trainer: Trainer) -> None:
        pass

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        pass

    def on_batch(self, trainer: Trainer, batch: Batch) -> None:
        pass

    def on_step(self, trainer: Trainer, stats: dict[str, torch.Tensor], n_images: int) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer) -> None:
        pass

    def on_fit_end(self, trainer: Trainer) -> None:
        pass
