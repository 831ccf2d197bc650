"""MoCo v3 (Chen, Xie and He, ICCV 2021), composed from existing parts: the contrastive term
over the current batch (row b's structure) whose keys are the momentum embeddings of the *other*
view only (N keys, not SimCLR's 2N), a learned predictor on the online branch, a momentum target,
tau = 0.2, and the loss multiplied by 2 tau as in its authors' code. With the keys detached the
loss form's gradient is the gradient form exactly: 2 (-u2^m + sum_v s_v v^m)."""

from __future__ import annotations

from unigrad.core.spec import BANK_SIZE, TAU, Form, MethodSpec
from unigrad.methods.contrastive import InfoNCE
from unigrad.models.heads import WITH_PREDICTOR

MOCOV3 = MethodSpec(
    name="mocov3",
    family="contrastive",
    description="MoCo v3: predictor + InfoNCE against the other view's momentum keys in the batch",
    target="momentum",
    needs=WITH_PREDICTOR,
    loss=Form(
        key="loss",
        kind="loss",
        row="",
        norm="l2",
        pos_grad="2 tau InfoNCE(h(u1), u2^m)",
        neg_grad="batch softmax",
        term=InfoNCE("loss", keys="pair", tau_scale=2.0),
    ),
    grads={
        "b": Form(
            key="b",
            kind="grad",
            row="b",
            norm="l2",
            pos_grad="-2 u2^m",
            neg_grad="2 sum_v s_v v^m",
            term=InfoNCE("grad", keys="pair", tau_scale=2.0),
            balance=1.0,
        ),
    },
    default_grad="b",
    params={"tau": TAU, "bank_size": BANK_SIZE},
    train_defaults={"momentum_base": 0.99},
)

METHODS = [MOCOV3]
