"""The online linear probe (:mod:`unigrad.eval.online_probe`): trained after every step on the
detached backbone features of the step's first view, scored on the eval split at every epoch
end as ``probe/linear_top1`` (metrics.csv, the progress bar, the report).

The features come from a forward hook on the online backbone that keeps the first output of
each step's online forward (grad enabled, training mode; the diagnostics and the evaluation
run without grad, the target's copy is another module), detached: no second backbone forward
and no change to the step. The labels come with the step's batch (:meth:`on_batch`,
:class:`~unigrad.data.pipeline.Batch`) on every data path; with CutMix (the first view is
mixed) the target mixes the two images' labels by area, as CutMix trains a classifier. The
probe is built only where the batches carry labels and an eval split exists, and a probe that
has not trained reports nothing. Nothing is read back to the host between epoch ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from unigrad.core import dist
from unigrad.engine.callbacks.base import Callback

if TYPE_CHECKING:
    from unigrad.data.pipeline import Batch
    from unigrad.engine.trainer import Trainer

METRIC = "probe/linear_top1"


class OnlineProbeMonitor(Callback):
    @staticmethod
    def applies(trainer: Trainer) -> bool:
        return trainer.parts.probe is not None

    def __init__(self) -> None:
        self.feats: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None  # the labels of the batch being trained on
        self._hook: Any = None

    def _capture(self, module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        if (
            self.feats is None
            and module.training
            and torch.is_grad_enabled()
            and isinstance(output, torch.Tensor)
        ):
            self.feats = output.detach()

    def on_fit_start(self, trainer: Trainer) -> None:
        self.feats = None
        self._hook = trainer.model.encoder.backbone.register_forward_hook(self._capture)

    def on_batch(self, trainer: Trainer, batch: Batch) -> None:
        self.labels = batch.labels

    def on_step(self, trainer: Trainer, stats: dict[str, torch.Tensor], n_images: int) -> None:
        feats, self.feats = self.feats, None
        labels, self.labels = self.labels, None
        if feats is not None and labels is not None and trainer.parts.probe is not None:
            trainer.parts.probe.train_on(feats, labels, trainer.parts.mix)

    def on_epoch_end(self, trainer: Trainer) -> None:
        probe, data = trainer.parts.probe, trainer.eval_data
        if probe is None or data is None or not probe.trained:
            return  # no number from a probe that never trained: it would read as chance
        # every rank extracts its shard of the eval split (a collective); rank 0 scores
        feats, labels = data.held_features(trainer.model.encoder.backbone, trainer.device)
        if not dist.is_main():
            return
        top1 = probe.top1(feats, labels)
        trainer.log_metrics({METRIC: top1})
        epoch = trainer.step / trainer.steps_per_epoch
        tqdm.write(f"epoch {epoch:g} ({trainer.cfg.eval_split}): {METRIC} {top1:.2f}")

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
