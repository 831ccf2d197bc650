"""UniGrad (paper eq. 14 / 15): -u2^m + lambda F u1, with F the EMA of the embedding correlation
matrix. The same term with other sample sets is Table 2's row e (F from the online outputs) and,
over the current batch, row j."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unigrad.core import gradients as G
from unigrad.core import losses as L
from unigrad.core.spec import CORR_SOURCE, LAMBD, RHO, Form, MethodSpec
from unigrad.core.term import Step, Term


@dataclass(frozen=True)
class Correlation(Term):
    """Positive -u2^t, negative lambda F u1 (eq. 14). F: the EMA matrix (``ema``, UniGrad and row
    e) or the batch's sum_v v1 v1^T / M of the online view (``batch``, row j, times ``scale``).
    The loss form is eq. 15 with F detached."""

    sets: tuple[str, ...] = ("ema", "batch")
    scale: float = 1.0

    def corr(self, step: Step, i: int) -> torch.Tensor:
        if self.sample_set == "ema":
            return step.corr
        key = ("batch_corr", i)
        if key not in step.cache:
            v1, _ = step.batch_set(i)
            step.cache[key] = v1.T @ v1 / v1.shape[0]
        return step.cache[key]

    def pair(self, step: Step, i: int, u: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        lam = step.hp["lambd"]
        if self.kind == "loss":
            return self.scale * L.unigrad_loss(u, pos, self.corr(step, i), lam)
        return self.scale * G.grad_correlation(u, pos, self.corr(step, i), lam)


UNIGRAD = MethodSpec(
    name="unigrad",
    family="unigrad",
    description="UniGrad: -u2^m + lambda F u1, F the EMA correlation matrix (eq. 14)",
    target="momentum",
    loss=Form(
        key="loss",
        kind="loss",
        row="",
        norm="l2",
        pos_grad="-cos(u1, u2^m)",
        neg_grad="lambda/2 sum rho_v cos^2",
        term=Correlation("loss"),
        balance=100.0,
        scales_with_dim=True,
        note="eq. 15",
    ),
    grads={
        "unigrad": Form(
            key="unigrad",
            kind="grad",
            row="UniGrad",
            norm="l2",
            pos_grad="-u2^m",
            neg_grad="F u1",
            term=Correlation("grad"),
            balance=100.0,
            scales_with_dim=True,
            note="eq. 14",
        ),
    },
    default_form="grad",
    default_grad="unigrad",
    params={"lambd": LAMBD, "rho": RHO, "corr_source": CORR_SOURCE},
)

METHODS = [UNIGRAD]
