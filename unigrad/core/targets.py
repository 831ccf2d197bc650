"""Target branches (paper Table 1, Table 3) and the EMA momentum schedule.

A target branch decides where the two ingredients of the unified gradient come from:

* ``pos``: the embedding that serves as the positive for the other view (u2^t);
* ``neg``: the embeddings that build the sample set V (batch, bank or F).

====================  ===========================  ===========================
kind                  pos                          neg
====================  ===========================  ===========================
``shared``            online output, with gradient  online output, with gradient
``stopgrad``          online output, detached       online output, detached
``momentum``          EMA network, detached         EMA network, detached
``momentum_pos``      EMA network, detached         online output, detached
``snapshot``          frozen copy refreshed every   same as pos
                      ``snapshot_every`` steps
====================  ===========================  ===========================

``snapshot`` is the k-step alternation of the SimSiam paper (sec. 5): the target is the online
network frozen at step t and refreshed every k steps.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

TARGETS = ("shared", "stopgrad", "momentum", "momentum_pos", "snapshot")
#: Target kinds that own a separate copy of the encoder.
COPY_TARGETS = ("momentum", "momentum_pos", "snapshot")


def cosine_momentum(base: float, final: float, total_steps: int) -> torch.Tensor:
    """Per-step EMA momentum, cosine from ``base`` (step 0) to ``final`` (last step).

    BYOL's schedule: m_t = final - (final - base) * (cos(pi * t / T) + 1) / 2, T = steps - 1.
    Returns a float64 tensor of shape [total_steps].
    """
    if total_steps <= 1:
        return torch.full((max(total_steps, 1),), float(base), dtype=torch.float64)
    t = torch.arange(total_steps, dtype=torch.float64) / (total_steps - 1)
    return final - (final - base) * (torch.cos(math.pi * t) + 1) / 2


@dataclass
class TargetOut:
    """Per-view target embeddings: ``pos[i]`` and ``neg[i]`` are [N, C] for view i."""

    pos: list[torch.Tensor]
    neg: list[torch.Tensor]


class TargetBranch(nn.Module):
    """The target side of the Siamese network.

    Args:
        kind: one of :data:`TARGETS`.
        encoder: the online encoder (backbone + projector) to copy for momentum/snapshot kinds.
        snapshot_every: refresh period in steps for ``snapshot``.
    """

    def __init__(self, kind: str, encoder: nn.Module, snapshot_every: int = 1) -> None:
        super().__init__()
        if kind not in TARGETS:
            raise ValueError(f"unknown target {kind!r}; choose one of {', '.join(TARGETS)}")
        self.kind = kind
        self.snapshot_every = max(int(snapshot_every), 1)
        self.net: nn.Module | None = None
        if kind in COPY_TARGETS:
            self.net = copy.deepcopy(encoder)
            for p in self.net.parameters():
                p.requires_grad_(False)

    @property
    def has_copy(self) -> bool:
        return self.net is not None

    @property
    def has_ema(self) -> bool:
        """Whether the copy follows the online encoder by EMA after every step (:meth:`ema_`);
        the snapshot's copy is refreshed by :meth:`update` instead."""
        return self.net is not None and self.kind != "snapshot"

    @torch.no_grad()
    def embed(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run the copied encoder on each view; [N, 3, H, W] -> [N, C]."""
        assert self.net is not None
        return [self.net(x) for x in images]

    def forward(self, images: list[torch.Tensor], online: list[torch.Tensor]) -> TargetOut:
        """Targets for the given views.

        Args:
            images: the views the target encoder sees (unmixed, global views only).
            online: the online encoder's outputs for the same views, [N, C] each.
        """
        if self.kind == "shared":
            return TargetOut(pos=list(online), neg=list(online))
        if self.kind == "stopgrad":
            det = [z.detach() for z in online]
            return TargetOut(pos=det, neg=det)
        copied = self.embed(images)
        if self.kind == "momentum_pos":
            return TargetOut(pos=copied, neg=[z.detach() for z in online])
        return TargetOut(pos=copied, neg=copied)

    @torch.no_grad()
    def update(self, encoder: nn.Module, momentum: float, step: int) -> None:
        """After the optimiser step: EMA (momentum kinds) or periodic copy (snapshot).

        EMA: theta_t <- m * theta_t + (1 - m) * theta_o, fused over all tensors with
        ``torch._foreach_lerp_``; buffers (BN running statistics) are copied.
        ``step`` is the number of optimiser steps done so far (1 after the first).
        """
        if self.net is None:
            return
        online_p = [p.detach() for p in encoder.parameters()]
        target_p = list(self.net.parameters())
        if self.kind == "snapshot":
            if step % self.snapshot_every == 0:
                torch._foreach_copy_(target_p, online_p)
                torch._foreach_copy_(list(self.net.buffers()), list(encoder.buffers()))
            return
        self.ema_(encoder, 1.0 - float(momentum))

    @torch.no_grad()
    def ema_(self, encoder: nn.Module, weight: float | torch.Tensor) -> None:
        """theta_t <- theta_t + weight * (theta_o - theta_t) (``weight`` = 1 - m; a 0-d tensor
        under ``compile: step``); floating-point buffers copied."""
        assert self.net is not None
        online_p = [p.detach() for p in encoder.parameters()]
        torch._foreach_lerp_(list(self.net.parameters()), online_p, weight)
        bufs = [b for b in self.net.buffers() if b.is_floating_point()]
        if bufs:
            src = [b for b in encoder.buffers() if b.is_floating_point()]
            torch._foreach_copy_(bufs, src)
