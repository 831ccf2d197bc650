"""The online linear probe: a linear classifier trained during pretraining on the detached
backbone features of each step's first view, the monitor that solo-learn and
stable-pretraining show beside the loss.

It has its own parameters and optimiser and only ever sees ``features.detach()``, so the
backbone's gradient, weights and every random draw of the run are the same with it or without
it (it draws nothing: its weights start at zero). The trainer builds it in
:func:`unigrad.engine.parts.build_parts` (it is in the checkpoint, so a resumed run continues
it exactly); the callback :class:`unigrad.engine.callbacks.probe.OnlineProbeMonitor` feeds it
and scores it on the eval split every epoch (``probe/linear_top1``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unigrad.core import dist
from unigrad.core.objective import Mix

#: Eval-split rows per batch when scoring (features are already computed).
SCORE_BATCH = 4096


class OnlineProbe(nn.Module):
    """BatchNorm without affine parameters, then a linear layer, [B, D] -> [B, classes].

    The normalisation makes one learning rate fit backbones whose features differ in scale by
    orders of magnitude (as MAE's linear probe); the linear layer starts at zero, so building
    the probe consumes no random numbers. Trained by SGD (momentum 0.9, constant ``lr``, no
    weight decay) with cross-entropy; across ranks its gradient is averaged.
    """

    def __init__(self, feat_dim: int, num_classes: int, lr: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(feat_dim, affine=False)
        self.weight = nn.Parameter(torch.zeros(num_classes, feat_dim))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.optimizer = torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [B, D] -> logits [B, classes]."""
        return F.linear(self.norm(feats.float()), self.weight, self.bias)

    def train_on(self, feats: torch.Tensor, labels: torch.Tensor, mix: Mix | None = None) -> None:
        """One SGD step on a batch: feats [B, D] (detached here), labels [B] int64 on the same
        device. ``mix``: the CutMix of the images the features came from (image i holds a box of
        image ``perm[i]``, ``ratio[i]`` of its own area kept): the target is then
        ``ratio * y_i + (1 - ratio) * y_perm[i]``, as CutMix trains a classifier. Nothing is read
        back to the host."""
        threads = torch.get_num_threads()
        if self.weight.device.type == "cpu":  # tiny ops: on shared cores, waiting for a
            torch.set_num_threads(1)  # second OpenMP thread costs 1000x the work (BENCHMARKS 1)
        try:
            self.train()
            with torch.enable_grad():
                logits = self(feats.detach())
                if mix is None:
                    loss = F.cross_entropy(logits, labels)
                else:
                    own = F.cross_entropy(logits, labels, reduction="none")
                    pasted = F.cross_entropy(logits, labels[mix.perm], reduction="none")
                    loss = (mix.ratio * own + (1 - mix.ratio) * pasted).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if dist.is_dist():
                for p in self.parameters():
                    p.grad = dist.all_reduce_mean(p.grad)
            self.optimizer.step()
        finally:
            torch.set_num_threads(threads)

    @property
    def trained(self) -> bool:
        """Whether the probe took at least one step (its optimiser holds momentum then; a
        resumed probe keeps it): an untrained probe's score means nothing."""
        return bool(self.optimizer.state)

    @torch.no_grad()
    def top1(self, feats: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 accuracy in percent on feats [N, D] with labels [N] (eval mode; one host read)."""
        self.eval()
        dev = self.weight.device
        correct = torch.zeros((), dtype=torch.long, device=dev)
        for i in range(0, len(feats), SCORE_BATCH):
            pred = self(feats[i : i + SCORE_BATCH].to(dev)).argmax(1)
            correct += (pred == labels[i : i + SCORE_BATCH].to(dev)).sum()
        return 100.0 * float(correct) / max(len(feats), 1)

    def checkpoint_state(self) -> dict[str, Any]:
        """The probe's weights, BN statistics and optimiser state (for the run's checkpoint)."""
        return {"module": self.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])


def backbone_width(encoder: nn.Module) -> int | None:
    """D, the width of the backbone's features: the input of the first linear layer of the
    encoder's heads (None for heads without one)."""
    heads = [getattr(encoder, name) for name in encoder.head_names]
    first = next((m for h in heads for m in h.modules() if isinstance(m, nn.Linear)), None)
    return None if first is None else int(first.in_features)
