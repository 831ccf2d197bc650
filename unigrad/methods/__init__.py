"""The METHODS registry: name -> how the method is assembled from parts.

A method is data, not a class: its default target branch, its predictor, its sample set, its
loss form, and its gradient forms (paper Table 2 rows) with their balance factors. The
:class:`unigrad.core.objective.Objective` module turns a spec into a loss.

Balance factors that multiply a correlation-type negative (sum_v (u.v/N) v or F u) scale with the
embedding width C: for unit vectors F has trace 1, so an isotropic F has eigenvalues 1/C, and the
paper's values were tuned for C = 2048. Their default is ``table_value * C / 2048``
(``scales_with_dim``); an explicit ``lambd`` is used as given.

Barlow Twins' batch-normalised embeddings have norm sqrt(C) where l2-normalised ones have norm 1,
and eq. 8 sums C diagonal terms, so its gradient is about C times every other row's (measured by
``bench/grad_scale.py``: 443x UniGrad's at C = 512). Its authors absorb this with LARS and a
``scale-loss`` factor; under the one SGD learning rate of a fair comparison the BN forms are
multiplied by ``scale_loss`` = 1/C by default (``Form.default_scale``), i.e. eq. 8 averaged over
channels instead of summed. ``scale_loss = 1`` gives eq. 8 as written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

REFERENCE_DIM = 2048


@dataclass(frozen=True)
class Form:
    """One loss form or gradient form (a Table 2 row) of a method."""

    key: str
    kind: str  # "loss" | "grad"
    row: str  # Table 2 row letter, "" where the paper has none
    norm: str  # "l2" | "bn" | "none"
    pos_grad: str
    neg_grad: str
    sample_set: str  # "batch" | "bank" | "ema"
    balance: float | None  # None: dynamic (DirectPred) or derived (VICReg row i)
    scales_with_dim: bool = False
    note: str = ""

    def default_lambda(self, dim: int) -> float | None:
        if self.balance is None:
            return None
        return self.balance * dim / REFERENCE_DIM if self.scales_with_dim else self.balance

    def default_scale(self, dim: int) -> float:
        """Loss multiplier: 1/C for batch-normalised embeddings (norm sqrt(C)), else 1."""
        return 1.0 / dim if self.norm == "bn" else 1.0


@dataclass(frozen=True)
class MethodSpec:
    name: str
    family: str
    description: str
    target: str  # default target branch (the original method's)
    predictor: str  # "none" | "mlp" (learned) | "directpred" (computed from F)
    loss: Form | None
    grads: dict[str, Form] = field(default_factory=dict)
    default_form: str = "loss"
    default_grad: str = ""
    hparams: dict[str, Any] = field(default_factory=dict)

    @property
    def forms(self) -> tuple[str, ...]:
        return tuple(k for k, v in (("loss", self.loss), ("grad", self.grads)) if v)

    def form(self, form: str, variant: str | None = None) -> Form:
        """The loss form, or the gradient form named ``variant`` (default row)."""
        if form == "loss":
            if self.loss is None:
                raise KeyError(f"{self.name} has no loss form in unigrad; use --form grad")
            return self.loss
        if form != "grad":
            raise KeyError(f"unknown form {form!r}; choose loss or grad")
        if not self.grads:
            raise KeyError(
                f"{self.name} has no gradient form in the paper (Table 2 row c); its gradient "
                "form is DirectPred's: use --method directpred --form grad"
            )
        key = variant or self.default_grad
        if key not in self.grads:
            raise KeyError(
                f"{self.name} has no gradient variant {key!r}; choose one of "
                f"{', '.join(self.grads)}"
            )
        return self.grads[key]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["forms"] = list(self.forms)
        return d


_INFONCE_POS = "-u2^t / tau"
_BATCH_CORR = "sum_v (u2.v2/N) v1"

METHODS: dict[str, MethodSpec] = {
    "moco": MethodSpec(
        name="moco",
        family="contrastive",
        description="MoCo v2: InfoNCE against a FIFO memory bank of momentum keys",
        target="momentum",
        predictor="none",
        loss=Form("loss", "loss", "", "l2", "InfoNCE (eq. 1)", "bank softmax", "bank", None),
        grads={
            "a": Form("a", "grad", "a", "l2", _INFONCE_POS, "sum_v s_v v^m / tau", "bank", 1.0),
        },
        default_grad="a",
        hparams={"tau": 0.2, "bank_size": 4096, "momentum_base": 0.99},
    ),
    "simclr": MethodSpec(
        name="simclr",
        family="contrastive",
        description="SimCLR: NT-Xent over the 2N views of the batch",
        target="shared",
        predictor="none",
        loss=Form("loss", "loss", "", "l2", "NT-Xent (eq. 19)", "batch softmax", "batch", None),
        grads={
            "b": Form("b", "grad", "b", "l2", _INFONCE_POS, "sum_v s_v v^t / tau", "batch", 1.0),
        },
        default_grad="b",
        hparams={"tau": 0.2},
    ),
    "byol": MethodSpec(
        name="byol",
        family="asymmetric",
        description="BYOL: learned predictor, momentum target, 2 - 2 cos",
        target="momentum",
        predictor="mlp",
        loss=Form("loss", "loss", "c", "l2", "2 - 2 cos(h(u1), u2^m)", "(in predictor)", "-", None),
        hparams={},
    ),
    "simsiam": MethodSpec(
        name="simsiam",
        family="asymmetric",
        description="SimSiam: learned predictor, stop-gradient target, -cos",
        target="stopgrad",
        predictor="mlp",
        loss=Form("loss", "loss", "", "l2", "-cos(h(u1), u2^t)", "(in predictor)", "-", None),
        hparams={"momentum_base": 1.0, "predictor_fixed_lr": True},
    ),
    "directpred": MethodSpec(
        name="directpred",
        family="asymmetric",
        description="DirectPred: BYOL with the predictor W_h computed from F (eq. 6)",
        target="momentum",
        predictor="directpred",
        loss=Form("loss", "loss", "", "l2", "-cos(W_h u1, u2^t)", "(in W_h)", "ema", None),
        grads={
            "d": Form(
                "d",
                "grad",
                "d",
                "l2",
                "-W_h u2^t",
                "lambda_dyn F u1 (eq. 28)",
                "ema",
                None,
                note="dynamic balance, eq. 28",
            ),
            "eq27": Form(
                "eq27",
                "grad",
                "",
                "l2",
                "-W_h u2^t",
                "lambda_dyn (F + eps^2 lmax^2 I) u1 (eq. 27)",
                "ema",
                None,
            ),
            "eq26": Form(
                "eq26",
                "grad",
                "",
                "l2",
                "-W_h u2^t",
                "lambda_dyn W_h^T W_h u1 (eq. 26)",
                "ema",
                None,
                note="exact gradient of the loss form",
            ),
            "e": Form("e", "grad", "e", "l2", "-u2^t", "F u1", "ema", 100.0, scales_with_dim=True),
        },
        default_grad="d",
        hparams={"rho": 0.99, "eps": 0.3, "corr_source": "online"},
    ),
    "barlow_twins": MethodSpec(
        name="barlow_twins",
        family="decorrelation",
        description="Barlow Twins: cross-correlation of batch-normalised views toward I",
        target="shared",
        predictor="none",
        loss=Form("loss", "loss", "", "bn", "sum (W_ii - 1)^2", "lambda sum W_ij^2", "batch", 5e-3),
        grads={
            "f": Form(
                "f",
                "grad",
                "f",
                "bn",
                "-A u2^t",
                _BATCH_CORR,
                "batch",
                5e-3,
                note="A = I - (1 - lambda) diag(W), eq. 32",
            ),
            "g": Form("g", "grad", "g", "bn", "-u2^t", _BATCH_CORR, "batch", 5e-3),
            "h": Form(
                "h", "grad", "h", "l2", "-u2^t", _BATCH_CORR, "batch", 50.0, scales_with_dim=True
            ),
        },
        default_grad="f",
        hparams={},
    ),
    "vicreg": MethodSpec(
        name="vicreg",
        family="decorrelation",
        description="VICReg: invariance + variance hinge + covariance (25/25/1)",
        target="shared",
        predictor="none",
        loss=Form("loss", "loss", "", "none", "25 MSE", "25 var + 1 cov", "batch", None),
        grads={
            "i": Form(
                "i",
                "grad",
                "i",
                "none",
                "-u2^t",
                "sum_v (u~1.v~1/N) v~1 + u1/lambda - B u~1",
                "batch",
                None,
                note="lambda = 2 w_cov N^2 / (w_sim (N-1)^2): exact VICReg gradient",
            ),
            "j": Form(
                "j",
                "grad",
                "j",
                "l2",
                "-u2^t",
                "sum_v (u1.v1/N) v1",
                "batch",
                25.0,
                scales_with_dim=True,
            ),
        },
        default_grad="i",
        hparams={"sim_weight": 25.0, "var_weight": 25.0, "cov_weight": 1.0, "gamma": 1.0},
    ),
    "unigrad": MethodSpec(
        name="unigrad",
        family="unigrad",
        description="UniGrad: -u2^m + lambda F u1, F the EMA correlation matrix (eq. 14)",
        target="momentum",
        predictor="none",
        loss=Form(
            "loss",
            "loss",
            "",
            "l2",
            "-cos(u1, u2^m)",
            "lambda/2 sum rho_v cos^2",
            "ema",
            100.0,
            scales_with_dim=True,
            note="eq. 15",
        ),
        grads={
            "unigrad": Form(
                "unigrad",
                "grad",
                "UniGrad",
                "l2",
                "-u2^m",
                "F u1",
                "ema",
                100.0,
                scales_with_dim=True,
                note="eq. 14",
            ),
        },
        default_form="grad",
        default_grad="unigrad",
        hparams={"rho": 0.99, "corr_source": "target"},
    ),
}


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
