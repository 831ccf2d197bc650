"""A method as data: its hyperparameters (:class:`Param`), its forms (:class:`Form`, a loss form
or a Table 2 row, holding the :class:`~unigrad.core.term.Term` that computes it) and the method
itself (:class:`MethodSpec`). Pure data: nothing here runs a step or knows the registry.

Every hyperparameter has one home, a :class:`Param` with its default, its check and its
documentation; a method lists the ones it takes, and :meth:`MethodSpec.resolve` returns the
checked values for one form and embedding width. The objective, ``unigrad methods``,
``unigrad compare`` and the configuration check all call it.

Balance factors that multiply a correlation-type negative (sum_v (u.v/N) v or F u) scale with the
embedding width C: for unit vectors F has trace 1, so an isotropic F has eigenvalues 1/C, and the
paper's values were tuned for C = 2048. Their default is ``table_value * C / 2048``
(``scales_with_dim``); an explicit ``lambd`` is used as given. A young network's F is not
isotropic (one eigenvalue near 0.3 at every width), so on a short run the rule over-weights the
negative term above C = 512: UniGrad collapses at widths 1024 and 2048 in 700 steps and learns at
2048 with ``lambd=25`` (BENCHMARKS section 7).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from unigrad.core.errors import HyperparameterError
from unigrad.core.needs import Needs
from unigrad.core.term import Term

__all__ = ["REFERENCE_DIM", "Form", "HyperparameterError", "MethodSpec", "Param"]

REFERENCE_DIM = 2048


@dataclass(frozen=True)
class Param:
    """One hyperparameter: default, check and documentation together.

    ``default`` None with a ``derive`` function: the default is computed from the form and the
    embedding width C (the balance factor, Barlow Twins' loss scale).
    """

    doc: str
    default: Any = None
    check: Callable[[Any], bool] | None = None
    rule: str = ""
    cast: Callable[[Any], Any] = float
    derive: Callable[[Form, int], Any] | None = None

    def with_default(self, value: Any) -> Param:
        return replace(self, default=value)

    def resolve(self, name: str, value: Any, form: Form, dim: int) -> Any:
        if value is None:
            value = self.default
            if value is None and self.derive is not None:
                value = self.derive(form, dim)
        if value is None:
            return None
        try:
            value = self.cast(value)
        except (TypeError, ValueError):
            raise HyperparameterError(f"{name} must be {self.rule}, got {value!r}") from None
        if isinstance(value, float) and not math.isfinite(value):  # nan passes any comparison
            raise HyperparameterError(f"{name} must be a finite number {self.rule}, got {value!r}")
        if self.check is not None and not self.check(value):
            raise HyperparameterError(f"{name} must be {self.rule}, got {value!r}")
        return value


def _choice(*options: str) -> dict[str, Any]:
    return {"cast": str, "check": lambda v: v in options, "rule": " or ".join(options)}


# Hyperparameters shared by several families (a family's own ones live in its file).
TAU = Param("temperature of the softmax", 0.2, lambda v: v > 0, "> 0")
LAMBD = Param(
    "balance factor lambda of the negative term (default: the Table 2 value, scaled with C where "
    "marked)",
    check=lambda v: v >= 0,
    rule=">= 0",
    derive=lambda form, dim: form.default_lambda(dim),
)
BANK_SIZE = Param("rows of the FIFO memory bank", 4096, lambda v: v >= 1, ">= 1", int)
RHO = Param("EMA rate of the correlation matrix F", 0.99, lambda v: 0 <= v < 1, "in [0, 1)")
CORR_SOURCE = Param(
    "which embeddings feed F: target (momentum branch, UniGrad as released) or online "
    "(the cifar-quick preset's choice for UniGrad)",
    "target",
    **_choice("target", "online"),
)


@dataclass(frozen=True, kw_only=True)
class Form:
    """One loss form or gradient form (a Table 2 row) of a method, and its :class:`Term`.

    Keyword fields only: ``key`` (the name ``variant`` selects; ``loss`` for the loss form),
    ``kind`` (``loss`` | ``grad``), ``row`` (Table 2 letter, "" where the paper has none),
    ``norm`` (``l2`` | ``bn`` | ``none``: how the objective normalises the embeddings), the
    table's ``pos_grad`` / ``neg_grad`` text, the ``term``, and the balance factor lambda
    (``balance``; ``scales_with_dim``: ``balance * C / 2048``).
    """

    key: str
    kind: str  # "loss" | "grad"
    row: str  # Table 2 row letter, "" where the paper has none
    norm: str  # "l2" | "bn" | "none"
    pos_grad: str
    neg_grad: str
    term: Term
    balance: float | None = None  # None: none, dynamic (DirectPred) or derived (VICReg row i)
    balance_label: str = "-"  # what the table prints when balance is None
    scales_with_dim: bool = False
    note: str = ""

    @property
    def sample_set(self) -> str:
        return self.term.sample_set

    def with_set(self, sample_set: str) -> Form:
        """This form with its negatives drawn from another set its term supports."""
        return replace(self, term=self.term.with_set(sample_set))

    def default_lambda(self, dim: int) -> float | None:
        if self.balance is None:
            return None
        return self.balance * dim / REFERENCE_DIM if self.scales_with_dim else self.balance

    def default_scale(self, dim: int) -> float:
        """Loss multiplier: 1/C for batch-normalised embeddings (norm sqrt(C)), else 1."""
        return 1.0 / dim if self.norm == "bn" else 1.0

    def balance_text(self, dim: int) -> str:
        lam = self.default_lambda(dim)
        return f"{lam:g}" if lam is not None else self.balance_label

    def to_dict(self, dim: int = REFERENCE_DIM) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "row": self.row,
            "norm": self.norm,
            "pos_grad": self.pos_grad,
            "neg_grad": self.neg_grad,
            "sample_set": self.sample_set,
            "scope": self.term.scope,
            "balance": self.balance,
            "scales_with_dim": self.scales_with_dim,
            "lambda_at_dim": self.default_lambda(dim),
            "note": self.note,
        }


@dataclass(frozen=True)
class MethodSpec:
    """A method: default target branch, its forms, its hyperparameters, what it needs.

    ``train_defaults`` are the method's defaults for engine settings (``momentum_base``,
    ``predictor_fixed_lr``); ``params`` the hyperparameters its forms take; ``needs`` its
    heads, schedules and step actions (:class:`~unigrad.core.needs.Needs`; default: the
    projector alone, no schedule, no action).
    """

    name: str
    family: str
    description: str
    target: str  # default target branch
    loss: Form | None
    grads: dict[str, Form] = field(default_factory=dict)
    default_form: str = "loss"
    default_grad: str = ""
    params: dict[str, Param] = field(default_factory=dict)
    train_defaults: dict[str, Any] = field(default_factory=dict)
    grad_hint: str = ""  # where to look when the method has no gradient form of its own
    needs: Needs = field(default_factory=Needs)

    @property
    def forms(self) -> tuple[str, ...]:
        return tuple(k for k, v in (("loss", self.loss), ("grad", self.grads)) if v)

    def all_forms(self) -> list[Form]:
        return ([self.loss] if self.loss else []) + list(self.grads.values())

    def form(self, form: str | None = None, variant: str | None = None) -> Form:
        """The loss form, or the gradient form named ``variant`` (default row)."""
        form = form or self.default_form
        if form == "loss":
            if self.loss is None:
                raise KeyError(f"{self.name} has no loss form in unigrad; use --form grad")
            return self.loss
        if form != "grad":
            raise KeyError(f"unknown form {form!r}; choose loss or grad")
        if not self.grads:
            raise KeyError(f"{self.name} has no gradient form of its own; {self.grad_hint}")
        key = variant or self.default_grad
        if key not in self.grads:
            raise KeyError(
                f"{self.name} has no gradient variant {key!r}; choose one of "
                f"{', '.join(self.grads)}"
            )
        return self.grads[key]

    def resolve(
        self, form: Form, dim: int, overrides: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Checked hyperparameters of ``form`` at width ``dim``: defaults, then ``overrides``
        (None means default). A key the method does not take is refused by name."""
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        unknown = sorted(set(overrides) - set(self.params))
        if unknown:
            takes = ", ".join(self.params) or "none"
            raise HyperparameterError(
                f"{self.name} takes no hyperparameter {', '.join(unknown)} (it takes: {takes}); "
                "remove it"
            )
        return {k: p.resolve(k, overrides.get(k), form, dim) for k, p in self.params.items()}

    def to_dict(self, dim: int = REFERENCE_DIM) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "description": self.description,
            "target": self.target,
            "heads": self.needs.describe(),
            "forms": list(self.forms),
            "default_form": self.default_form,
            "default_grad": self.default_grad,
            "loss": self.loss.to_dict(dim) if self.loss else None,
            "grads": {k: f.to_dict(dim) for k, f in self.grads.items()},
            "params": {
                k: {"default": p.default, "doc": p.doc, "rule": p.rule}
                for k, p in self.params.items()
            },
            "train_defaults": dict(self.train_defaults),
        }
