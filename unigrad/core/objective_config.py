"""The ``objective`` section of the configuration: which method, in which form, with which target
branch and sample set, and its hyperparameters (paper Table 1 / Table 2)."""

from dataclasses import dataclass, field
from typing import Any

from unigrad.core.errors import HyperparameterError
from unigrad.core.objective import SYMMETRIES, check_parts
from unigrad.core.registry import METHODS, get_method
from unigrad.core.section import Section, setting
from unigrad.core.targets import TARGETS
from unigrad.errors import UserError


@dataclass
class ObjectiveConfig(Section):
    name = "objective"

    method: str = setting("unigrad", "a registered method (`unigrad methods`)", "arch")
    form: str | None = setting(None, "loss | grad; None: the method's default", "arch", "untrained")
    variant: str | None = setting(
        None, "gradient-form row (Table 2), e.g. f/g/h; None: the default", "arch", "untrained"
    )
    target: str | None = setting(
        None, "shared | stopgrad | momentum | momentum_pos | snapshot; None: the method's",
        "arch", "untrained",
    )  # fmt: skip
    snapshot_every: int = setting(1, "steps between snapshot-target refreshes; 0: every epoch")
    symmetry: str = setting("sym", "sym | asym | asym2x (SimSiam's ablation)")
    sample_set: str | None = setting(None, "draw the negatives from another set the form takes")
    hparams: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "doc": "the method's hyperparameters (tau, lambd, rho, ...; `unigrad methods`); a "
            "top-level key that names one (`--set tau=0.1`) lands here",
            "tags": frozenset({"untrained"}),  # compared as resolved (every default filled in)
        },
    )

    def check(self, *, n_views: int = 2, cutmix: bool = False, dim: int = 2048) -> None:
        """The method, its form and parts, for ``n_views`` views (multi-crop), CutMix and an
        embedding width ``dim`` (the other sections' settings that the objective depends on)."""
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.target is not None and self.target not in TARGETS:
            raise UserError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        if self.symmetry not in SYMMETRIES:
            raise UserError(f"symmetry must be one of {', '.join(SYMMETRIES)}")
        spec = get_method(self.method)
        try:
            form = spec.form(self.form, self.variant)
            if self.sample_set is not None:
                form = form.with_set(self.sample_set)
            check_parts(
                spec,
                form,
                target=self.target or spec.target,
                n_views=n_views,
                symmetry=self.symmetry,
                cutmix=cutmix,
                hp=spec.resolve(form, dim, self.hparams),
            )
        except KeyError as e:
            raise UserError(str(e.args[0])) from None
        except HyperparameterError as e:
            raise UserError(str(e)) from None
        if self.snapshot_every < 0:
            raise UserError(f"snapshot_every must be >= 0, got {self.snapshot_every}")
