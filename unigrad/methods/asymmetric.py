"""Asymmetric family (paper Table 2 rows c, d, e): BYOL, SimSiam, DirectPred.

A predictor on the online branch and a target without gradient. The negative term is hidden in
the predictor (BYOL, SimSiam: learned); DirectPred computes it from F, W_h = F^1/2 + eps lmax I
(eq. 6), which makes the negative explicit: rows d (eq. 28), eq. 27, eq. 26 (exact), and the
simplification e, -u2^t + lambda F u1 (UniGrad's term with F from the online outputs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from unigrad.core import gradients as G
from unigrad.core import losses as L
from unigrad.core.samples import directpred_predictor
from unigrad.core.spec import CORR_SOURCE, LAMBD, RHO, Form, MethodSpec, Param
from unigrad.core.term import Step, Term
from unigrad.methods.unigrad import Correlation
from unigrad.models.heads import WITH_PREDICTOR


@dataclass(frozen=True)
class Cosine(Term):
    """A learned predictor's loss against the target: ``fn(h(u1), u2^t)`` on unit vectors."""

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = L.negative_cosine

    def pair(self, step: Step, i: int, u: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.fn(u, pos)


@dataclass(frozen=True)
class DirectPred(Term):
    """DirectPred with W_h from F: the loss -cos(W_h u1, u2^t) (eq. 22), or its gradient in the
    form of eq. 26 (exact), 27 or 28 (``variant``), with the dynamic balance lambda~."""

    sets: tuple[str, ...] = ("ema",)
    variant: str = ""
    cuda_graph_blocker: ClassVar[str] = (
        "DirectPred's W_h is an eigendecomposition (torch.linalg.eigh), whose error check "
        "reads the host, so a CUDA graph cannot record it"
    )

    def prepare(self, step: Step) -> None:
        step.cache["w_h"] = directpred_predictor(step.corr, step.hp["eps"])
        step.cache["lambda_dyn"] = []

    def pair(self, step: Step, i: int, u: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        w_h, sqrt_f, lam_max = step.cache["w_h"]
        if self.kind == "loss":
            return L.directpred_loss(u, pos, w_h)
        g, lam = G.grad_directpred(
            u, pos, step.corr, w_h, sqrt_f, lam_max, step.hp["eps"], variant=self.variant
        )
        step.cache["lambda_dyn"].append(lam.mean())
        step.stats["lambda_dyn"] = torch.stack(step.cache["lambda_dyn"]).mean()
        return g


_HINT = "in the paper (Table 2 row c) it is DirectPred's: use --method directpred --form grad"

BYOL = MethodSpec(
    name="byol",
    family="asymmetric",
    description="BYOL: learned predictor, momentum target, 2 - 2 cos",
    grad_hint=_HINT,
    target="momentum",
    needs=WITH_PREDICTOR,
    loss=Form(
        key="loss",
        kind="loss",
        row="c",
        norm="l2",
        pos_grad="2 - 2 cos(h(u1), u2^m)",
        neg_grad="(in predictor)",
        term=Cosine("loss", fn=L.byol_loss),
    ),
)

SIMSIAM = MethodSpec(
    name="simsiam",
    family="asymmetric",
    description="SimSiam: learned predictor, stop-gradient target, -cos",
    grad_hint=_HINT,
    target="stopgrad",
    needs=WITH_PREDICTOR,
    loss=Form(
        key="loss",
        kind="loss",
        row="",
        norm="l2",
        pos_grad="-cos(h(u1), u2^t)",
        neg_grad="(in predictor)",
        term=Cosine("loss", fn=L.negative_cosine),
    ),
    train_defaults={"momentum_base": 1.0, "predictor_fixed_lr": True},
)

_WH = "-W_h u2^t"
EPS = Param("DirectPred's eps: W_h = F^1/2 + eps lambda_max I", 0.3, lambda v: v >= 0, ">= 0")

DIRECTPRED = MethodSpec(
    name="directpred",
    family="asymmetric",
    description="DirectPred: BYOL with the predictor W_h computed from F (eq. 6)",
    target="momentum",
    loss=Form(
        key="loss",
        kind="loss",
        row="",
        norm="l2",
        pos_grad="-cos(W_h u1, u2^t)",
        neg_grad="(in W_h)",
        term=DirectPred("loss"),
    ),
    grads={
        "d": Form(
            key="d",
            kind="grad",
            row="d",
            norm="l2",
            pos_grad=_WH,
            neg_grad="lambda_dyn F u1 (eq. 28)",
            term=DirectPred("grad", variant="eq28"),
            balance_label="dynamic",
            note="dynamic balance, eq. 28",
        ),
        "eq27": Form(
            key="eq27",
            kind="grad",
            row="",
            norm="l2",
            pos_grad=_WH,
            neg_grad="lambda_dyn (F + eps^2 lmax^2 I) u1 (eq. 27)",
            term=DirectPred("grad", variant="eq27"),
            balance_label="dynamic",
        ),
        "eq26": Form(
            key="eq26",
            kind="grad",
            row="",
            norm="l2",
            pos_grad=_WH,
            neg_grad="lambda_dyn W_h^T W_h u1 (eq. 26)",
            term=DirectPred("grad", variant="eq26"),
            balance_label="dynamic",
            note="exact gradient of the loss form",
        ),
        "e": Form(
            key="e",
            kind="grad",
            row="e",
            norm="l2",
            pos_grad="-u2^t",
            neg_grad="F u1",
            term=Correlation("grad"),
            balance=100.0,
            scales_with_dim=True,
        ),
    },
    default_grad="d",
    params={
        "lambd": LAMBD,
        "rho": RHO,
        "eps": EPS,
        "corr_source": CORR_SOURCE.with_default("online"),
    },
)

METHODS = [BYOL, SIMSIAM, DIRECTPRED]
