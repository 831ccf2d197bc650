"""Contrastive family (paper Table 2 rows a, b): MoCo and SimCLR.

Positive term -u2^t / tau; negative term sum_v s_v v / tau, s the softmax of u.v / tau over the
positive and the sample set: a memory bank of momentum keys (MoCo, row a) or the targets of the
current batch (SimCLR, row b; eq. 21 when the targets are detached).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unigrad.core import gradients as G
from unigrad.core import losses as L
from unigrad.core.spec import BANK_SIZE, TAU, Form, MethodSpec
from unigrad.core.term import Step, Term


@dataclass(frozen=True)
class InfoNCE(Term):
    """InfoNCE of each anchor against its positive and a set of negatives (eq. 1 / 18 / 21).

    ``keys``: with the batch set, ``all`` contrasts against every global target view (SimCLR's
    2N), ``pair`` against the pair's own target view (MoCo v3's N). Entries that show the
    anchor's own image are masked (the positive enters once, through ``pos``). With the bank set
    the negatives are the bank's rows. ``tau_scale``: when non-zero the loss (or gradient) is
    multiplied by ``tau_scale * tau`` (MoCo v3: 2, its loss is 2 tau InfoNCE); 0 leaves it as is.
    """

    sets: tuple[str, ...] = ("batch", "bank")
    keys: str = "all"
    tau_scale: float = 0.0

    def negatives(self, step: Step, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(negatives [K, C], mask [N, K] or None) of online view ``i``."""
        if self.sample_set == "bank":
            return step.negatives, None
        views = range(step.n_global)
        if self.keys == "pair":
            views = [js[0] for a, js in step.global_pairs if a == i] or [
                js[0] for _, js in step.global_pairs
            ]
        key = ("keys", tuple(views))
        if key not in step.cache:
            negs = torch.cat([self.key_view(step, step.targets.neg[j]) for j in views])
            step.cache[key] = (negs, step.same_image_mask(len(views)))
        return step.cache[key]

    def key_view(self, step: Step, t: torch.Tensor) -> torch.Tensor:
        return step.glob(t if self.kind == "loss" else t.detach())

    def pair(self, step: Step, i: int, u: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        negs, mask = self.negatives(step, i)
        tau = step.hp["tau"]
        mult = self.tau_scale * tau if self.tau_scale else 1.0
        if self.kind == "loss":
            return mult * L.info_nce(u, pos, negs, tau, mask)
        return mult * G.grad_infonce(u, pos, negs, tau, mask)


@dataclass(frozen=True)
class NTXent(Term):
    """SimCLR's loss (eq. 19): NT-Xent over the 2N global views, each anchor against the other
    2N - 2 and its positive; with a shared target every term carries gradient (eq. 20)."""

    scope: str = "batch"
    sets: tuple[str, ...] = ("batch",)

    def batch(self, step: Step) -> torch.Tensor:
        negs = torch.cat([step.glob(t) for t in step.targets.neg])
        anchors = torch.cat([step.glob(step.online[i]) for i, _ in step.pairs])
        pos = torch.cat([step.glob(step.targets.pos[js[0]]) for _, js in step.pairs])
        mask = L.nt_xent_mask(negs.shape[0] // 2, device=negs.device)
        return L.info_nce(anchors, pos, negs, step.hp["tau"], mask)


_POS = "-u2^t / tau"

MOCO = MethodSpec(
    name="moco",
    family="contrastive",
    description="MoCo v2: InfoNCE against a FIFO memory bank of momentum keys",
    target="momentum",
    loss=Form(
        key="loss",
        kind="loss",
        row="",
        norm="l2",
        pos_grad="InfoNCE (eq. 1)",
        neg_grad="bank softmax",
        term=InfoNCE("loss", sets=("bank", "batch")),
    ),
    grads={
        "a": Form(
            key="a",
            kind="grad",
            row="a",
            norm="l2",
            pos_grad=_POS,
            neg_grad="sum_v s_v v^m / tau",
            term=InfoNCE("grad", sets=("bank", "batch")),
            balance=1.0,
        ),
    },
    default_grad="a",
    params={"tau": TAU, "bank_size": BANK_SIZE},
    train_defaults={"momentum_base": 0.99},
)

SIMCLR = MethodSpec(
    name="simclr",
    family="contrastive",
    description="SimCLR: NT-Xent over the 2N views of the batch",
    target="shared",
    loss=Form(
        key="loss",
        kind="loss",
        row="",
        norm="l2",
        pos_grad="NT-Xent (eq. 19)",
        neg_grad="batch softmax",
        term=NTXent("loss"),
    ),
    grads={
        "b": Form(
            key="b",
            kind="grad",
            row="b",
            norm="l2",
            pos_grad=_POS,
            neg_grad="sum_v s_v v^t / tau",
            term=InfoNCE("grad"),
            balance=1.0,
        ),
    },
    default_grad="b",
    params={"tau": TAU, "bank_size": BANK_SIZE},
)

METHODS = [MOCO, SIMCLR]
