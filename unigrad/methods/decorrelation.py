"""Decorrelation family (paper Table 2 rows f-j): Barlow Twins and VICReg.

The negative term sum_v (u.v/N) v runs over the current batch. Barlow Twins (eq. 8) on
batch-standardised embeddings: row f is its exact gradient (eq. 32, A = I - (1 - lambda)
diag(W)), g replaces A by I, h uses l2-normalised outputs. VICReg (eq. 10) on raw embeddings:
row i is its exact gradient (eq. 39), j drops the last term and normalises (UniGrad's term over
the batch).

Barlow Twins' batch-normalised embeddings have norm sqrt(C) and eq. 8 sums C terms, so its
gradient is about C times every other row's (``bench/grad_scale.py``: 443x UniGrad's at
C = 512). Its authors absorb this with LARS and a ``scale-loss`` factor; under the one SGD
learning rate of a fair comparison the BN forms are multiplied by ``scale_loss`` = 1/C by default
(eq. 8 averaged over channels instead of summed); ``scale_loss = 1`` gives eq. 8 as written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unigrad.core import gradients as G
from unigrad.core import losses as L
from unigrad.core.spec import LAMBD, Form, MethodSpec, Param
from unigrad.core.term import Step, Term
from unigrad.methods.unigrad import Correlation


@dataclass(frozen=True)
class BarlowLoss(Term):
    """Eq. 8 on the global batch, for each pair of views, times ``scale_loss``."""

    scope: str = "batch"
    sets: tuple[str, ...] = ("batch",)

    def batch(self, step: Step) -> torch.Tensor:
        hp = step.hp
        return torch.stack(
            [
                hp["scale_loss"]
                * L.barlow_twins_loss(
                    step.glob(step.online[i]), step.glob(step.targets.pos[js[0]]), hp["lambd"]
                )
                for i, js in step.pairs
            ]
        ).mean()


@dataclass(frozen=True)
class BarlowGrad(Term):
    """Rows f (``full_a``), g, h: 2 (-A u2 + lambda W u2), W the batch cross-correlation."""

    sets: tuple[str, ...] = ("batch",)
    full_a: bool = True

    def pair(self, step: Step, i: int, u: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        key = ("barlow_w", i)
        if key not in step.cache:
            step.cache[key] = L.cross_correlation(*step.batch_set(i))
        w = step.cache[key]
        diag = torch.diagonal(w)
        step.stats["diag_max"], step.stats["diag_min"] = diag.max(), diag.min()
        hp = step.hp
        return hp["scale_loss"] * G.grad_barlow(u, pos, w, hp["lambd"], full_a=self.full_a)


def _weights(hp: dict) -> dict[str, float]:
    return {k: hp[k] for k in ("sim_weight", "var_weight", "cov_weight", "gamma")}


@dataclass(frozen=True)
class VICRegLoss(Term):
    """Eq. 10 with its authors' normalisation on the gathered raw embeddings."""

    scope: str = "batch"
    sets: tuple[str, ...] = ("batch",)

    def batch(self, step: Step) -> torch.Tensor:
        return torch.stack(
            [
                L.vicreg_loss(
                    step.glob(step.online[i]),
                    step.glob(step.targets.pos[js[0]]),
                    **_weights(step.hp),
                )
                for i, js in step.pairs
            ]
        ).mean()


@dataclass(frozen=True)
class VICRegGrad(Term):
    """Row i (eq. 39): VICReg's exact gradient; lambda derived from the weights unless set."""

    sets: tuple[str, ...] = ("batch",)

    def pair(self, step: Step, i: int, u: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        v1, _ = step.batch_set(i)
        w = _weights(step.hp)
        lam = step.hp["lambd"]
        if lam is None:
            lam = G.vicreg_balance(v1.shape[0], w["sim_weight"], w["cov_weight"])
        return G.grad_vicreg(u, pos, v1, lambd=lam, **w)


_CORR = "sum_v (u2.v2/N) v1"
SCALE_LOSS = Param(
    "multiplier of Barlow Twins' batch-normalised forms (default 1/C: eq. 8 averaged over "
    "channels; 1: eq. 8 as written)",
    check=lambda v: v > 0,
    rule="> 0",
    derive=lambda form, dim: form.default_scale(dim),
)

BARLOW_TWINS = MethodSpec(
    name="barlow_twins",
    family="decorrelation",
    description="Barlow Twins: cross-correlation of batch-normalised views toward I",
    target="shared",
    loss=Form(
        key="loss",
        kind="loss",
        row="",
        norm="bn",
        pos_grad="sum (W_ii - 1)^2",
        neg_grad="lambda sum W_ij^2",
        term=BarlowLoss("loss"),
        balance=5e-3,
    ),
    grads={
        "f": Form(
            key="f",
            kind="grad",
            row="f",
            norm="bn",
            pos_grad="-A u2^t",
            neg_grad=_CORR,
            term=BarlowGrad("grad"),
            balance=5e-3,
            note="A = I - (1 - lambda) diag(W), eq. 32",
        ),
        "g": Form(
            key="g",
            kind="grad",
            row="g",
            norm="bn",
            pos_grad="-u2^t",
            neg_grad=_CORR,
            term=BarlowGrad("grad", full_a=False),
            balance=5e-3,
        ),
        "h": Form(
            key="h",
            kind="grad",
            row="h",
            norm="l2",
            pos_grad="-u2^t",
            neg_grad=_CORR,
            term=BarlowGrad("grad", full_a=False),
            balance=50.0,
            scales_with_dim=True,
        ),
    },
    default_grad="f",
    params={"lambd": LAMBD, "scale_loss": SCALE_LOSS},
)


def _weight(doc: str, default: float) -> Param:
    return Param(doc, default, lambda v: v >= 0, ">= 0")


VICREG = MethodSpec(
    name="vicreg",
    family="decorrelation",
    description="VICReg: invariance + variance hinge + covariance (25/25/1)",
    target="shared",
    loss=Form(
        key="loss",
        kind="loss",
        row="",
        norm="none",
        pos_grad="25 MSE",
        neg_grad="25 var + 1 cov",
        term=VICRegLoss("loss"),
    ),
    grads={
        "i": Form(
            key="i",
            kind="grad",
            row="i",
            norm="none",
            pos_grad="-u2^t",
            neg_grad="sum_v (u~1.v~1/N) v~1 + u1/lambda - B u~1",
            term=VICRegGrad("grad"),
            balance_label="derived",
            note="lambda = 2 w_cov N^2 / (w_sim (N-1)^2): exact VICReg gradient",
        ),
        "j": Form(
            key="j",
            kind="grad",
            row="j",
            norm="l2",
            pos_grad="-u2^t",
            neg_grad="sum_v (u1.v1/N) v1",
            term=Correlation("grad", sets=("batch",), scale=2.0),
            balance=25.0,
            scales_with_dim=True,
        ),
    },
    default_grad="i",
    params={
        "lambd": LAMBD,
        "sim_weight": _weight("weight of the invariance (MSE) term", 25.0),
        "var_weight": _weight("weight of the variance hinge", 25.0),
        "cov_weight": _weight("weight of the covariance term", 1.0),
        "gamma": _weight("target standard deviation of the variance hinge", 1.0),
    },
)

METHODS = [BARLOW_TWINS, VICREG]
