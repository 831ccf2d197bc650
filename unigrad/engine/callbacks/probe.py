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

The probe (its module and optimiser) is this callback's own: its state is the callback's
``state_dict``, which the checkpoint carries and a resume restores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from unigrad.core import dist
from unigrad.engine.callbacks.base import Callback, LoopState
from unigrad.eval.online_probe import OnlineProbe, backbone_width

if TYPE_CHECKING:
    from unigrad.engine.trainer import Trainer

METRIC = "probe/linear_top1"


class OnlineProbeMonitor(Callback):
    """Trains and scores ``probe`` (:class:`~unigrad.eval.online_probe.OnlineProbe`)."""

    state_key = "online_probe"  # type: ignore[assignment]

    @classmethod
    def for_run(cls, trainer: Trainer) -> OnlineProbeMonitor | None:
        """The probe of a run with ``online_probe`` on, labelled data and a backbone whose width
        is known (None otherwise). Its weights start at zero: building it draws nothing."""
        cfg, classes = trainer.cfg, trainer.data.num_classes
        width = backbone_width(trainer.model.encoder)
        if not (cfg.online_probe and classes and width):
            return None
        return cls(OnlineProbe(width, classes, cfg.online_probe_lr).to(trainer.device))

    def __init__(self, probe: OnlineProbe) -> None:
        self.probe = probe
        self.feats: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None  # the labels of the batch being trained on
        self._hook: Any = None

    def state_dict(self) -> dict[str, Any]:
        """The probe's weights, BN statistics and optimiser state."""
        return self.probe.checkpoint_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.probe.load_checkpoint_state(state)

    def _capture(self, module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        if (
            self.feats is None
            and module.training
            and torch.is_grad_enabled()
            and isinstance(output, torch.Tensor)
        ):
            self.feats = output.detach()

    def on_fit_start(self, state: LoopState) -> None:
        self.feats = None
        self._hook = state.parts.model.encoder.backbone.register_forward_hook(self._capture)

    def on_batch(self, state: LoopState) -> None:
        self.labels = state.batch.labels if state.batch is not None else None

    def on_step(self, state: LoopState) -> None:
        feats, self.feats = self.feats, None
        labels, self.labels = self.labels, None
        if feats is not None and labels is not None:
            self.probe.train_on(feats, labels, state.parts.mix)

    def on_epoch_end(self, state: LoopState) -> None:
        data = state.eval_data
        if data is None or not self.probe.trained:
            return  # no number from a probe that never trained: it would read as chance
        # every rank extracts its shard of the eval split (a collective); rank 0 scores
        feats, labels = data.held_features(state.parts.model.encoder.backbone, state.device)
        if not dist.is_main():
            return
        top1 = self.probe.top1(feats, labels)
        state.log_metrics({METRIC: top1})
        epoch = state.step / state.clock.steps_per_epoch
        tqdm.write(f"epoch {epoch:g} ({state.cfg.eval_split}): {METRIC} {top1:.2f}")

    def on_fit_end(self, state: LoopState) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
