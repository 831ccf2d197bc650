"""NNCLR (Dwibedi et al., ICCV 2021): the positive of an anchor is the nearest neighbour of its
target embedding in a support queue of past embeddings, and the negatives are the neighbours of
the other images of the batch. Composed from existing parts: the contrastive term over the batch
(row b's structure), a memory bank as the support set, a learned predictor and a stop-gradient
target.

The softmax runs over the anchor's candidates (as in rows a and b), so with the neighbours
detached the loss form's gradient is row b's with every target replaced by its neighbour:
(1/tau) (-NN(u2) + sum_v s_v NN(v)). (The NNCLR paper normalises over the other axis, the
anchors of one neighbour; its two directions are symmetrised the same way.)"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unigrad.core.spec import BANK_SIZE, Form, MethodSpec, Param
from unigrad.core.term import Step
from unigrad.methods.contrastive import InfoNCE
from unigrad.models.heads import WITH_PREDICTOR


def nearest(x: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Rows of ``support`` [K, C] nearest (by dot product) to each row of ``x`` [N, C]; ``x``
    itself while the support set is empty."""
    if support.shape[0] == 0:
        return x.detach()
    return support[(x.detach() @ support.T).argmax(dim=1)]


@dataclass(frozen=True)
class NearestNeighbourInfoNCE(InfoNCE):
    """InfoNCE over the batch with targets replaced by their support-set neighbours."""

    sets: tuple[str, ...] = ("bank",)

    def positive(self, step: Step, pos: torch.Tensor) -> torch.Tensor:
        return nearest(pos, step.negatives)

    def negatives(self, step: Step, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if "nn_keys" not in step.cache:
            keys = torch.cat([step.glob(t.detach()) for t in step.targets.neg])
            step.cache["nn_keys"] = (
                nearest(keys, step.negatives),
                step.same_image_mask(step.n_global),
            )
        return step.cache["nn_keys"]


NNCLR = MethodSpec(
    name="nnclr",
    family="contrastive",
    description="NNCLR: InfoNCE with the positive the nearest neighbour in a support queue",
    target="stopgrad",
    needs=WITH_PREDICTOR,
    loss=Form(
        key="loss",
        kind="loss",
        row="",
        norm="l2",
        pos_grad="InfoNCE(h(u1), NN(u2))",
        neg_grad="batch softmax over NN(v)",
        term=NearestNeighbourInfoNCE("loss"),
    ),
    grads={
        "b": Form(
            key="b",
            kind="grad",
            row="b",
            norm="l2",
            pos_grad="-NN(u2^t) / tau",
            neg_grad="sum_v s_v NN(v^t) / tau",
            term=NearestNeighbourInfoNCE("grad"),
            balance=1.0,
        ),
    },
    default_grad="b",
    params={
        "tau": Param("temperature of the softmax", 0.1, lambda v: v > 0, "> 0"),
        "bank_size": BANK_SIZE.with_default(8192),
    },
)

METHODS = [NNCLR]
