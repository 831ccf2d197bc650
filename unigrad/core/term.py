"""What a form computes (:class:`Term`) and what it computes it from (:class:`Step`).

A :class:`Term` is the method-specific part of an objective: the positive and negative terms of
one loss form or one Table 2 row. The generic :class:`unigrad.core.objective.Objective` builds one
:class:`Step` per call (the step's fp32 views, the sample set, the hyperparameters, the run's
:class:`~unigrad.core.clock.Clock`) and hands it to the term; a term sees nothing else, so it
never reaches back into the objective. Writing a term is all a new method needs (README:
"Adding a method"):

* ``pair`` terms are called once per (online view, positive) pair with the normalised anchors
  u [N, C] and positives [N, C]; a loss form returns that direction's loss (a scalar), a gradient
  form its gradient g [N, C] w.r.t. u (paper eq. 13: the objective turns it into the surrogate
  (g.detach() * u).sum(-1).mean());
* ``batch`` terms return one loss over the whole (global) batch of the two global views.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from unigrad.core import dist
from unigrad.core import losses as L
from unigrad.core.clock import Clock
from unigrad.core.errors import HyperparameterError
from unigrad.core.targets import TargetOut


@dataclass(kw_only=True)
class Step:
    """One call of the objective as a term sees it: inputs (fp32), sample set, normalisation.

    ``clock`` is where the run is (``Objective.forward(..., step=clock)``: step, epoch, steps
    per epoch, total steps, progress; a bare step, or the objective's own count of its calls,
    gives a clock of one-step epochs), so a schedule by step or by epoch (a temperature
    warm-up, a queue used from some epoch on) is written in the term alone, with tensor
    operations (``compile: step`` passes a clock whose ``step`` is a 0-d int64 tensor).
    ``hp`` holds the values of the method's schedules (:attr:`~unigrad.core.needs.Needs.schedules`)
    at this clock.
    ``parts`` are the term's own modules (:meth:`Term.modules`), kept and trained by the
    objective. Terms may write statistics to ``stats`` (logged as ``objective.stats``) and share
    per-step quantities through ``cache``.
    """

    online: list[torch.Tensor]  # projector outputs z [N, C] per view (global views first)
    targets: TargetOut  # target outputs of the global views, [N, C] each
    pred: list[torch.Tensor] | None  # predictor outputs [N, C] per view
    pairs: list[tuple[int, list[int]]]  # (online view, target views of its positive)
    hp: dict[str, Any]  # the checked hyperparameters (MethodSpec.resolve)
    normalization: str  # the form's normalisation: "l2" | "bn" | "none"
    clock: Clock = field(default_factory=Clock)  # step (0-d tensor under compile: step), epoch
    parts: Mapping[str, nn.Module] = field(default_factory=dict)
    corr: torch.Tensor | None = None  # F after this step's update [C, C]
    negatives: torch.Tensor | None = None  # the bank's rows [K, C]
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    cache: dict[Any, Any] = field(default_factory=dict)

    @property
    def index(self) -> int | torch.Tensor:
        """The training step, from 0 (``clock.step``)."""
        return self.clock.step

    @property
    def n_global(self) -> int:
        return len(self.targets.pos)

    @property
    def global_pairs(self) -> list[tuple[int, list[int]]]:
        return [(i, js) for i, js in self.pairs if i < self.n_global]

    def norm(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised rows of this rank [N, C] (batch statistics from the global batch)."""
        if self.normalization == "bn":
            return self.glob(z)[dist.local_slice(z.shape[0])]
        return F.normalize(z, dim=-1) if self.normalization == "l2" else z

    def glob(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings of the global batch [W*N, C]."""
        full = dist.gather_with_grad(z) if z.requires_grad else dist.gather_no_grad(z)
        if self.normalization == "bn":
            return L.batch_standardize(full)
        return F.normalize(full, dim=-1) if self.normalization == "l2" else full

    def batch_set(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch sample set of online view ``i``: (online v1, target v2) of the global batch,
        detached and normalised, [M, C] each. A global view's set is its own pair (view i and
        its target view); a local view's is the union of the global pairs' sets."""
        pairs = [(a, js) for a, js in self.global_pairs if a == i] or self.global_pairs
        key = ("batch_set", tuple(a for a, _ in pairs))
        if key not in self.cache:
            v1 = torch.cat([self.glob(self.online[a].detach()) for a, _ in pairs])
            v2 = torch.cat([self.glob(self.targets.neg[js[0]].detach()) for _, js in pairs])
            self.cache[key] = (v1, v2)
        return self.cache[key]

    def same_image_mask(self, blocks: int) -> torch.Tensor:
        """[N, blocks * W*N] mask (True = excluded) of the entries that show this rank's images
        in a set made of ``blocks`` global views: an anchor's own entry and its positives."""
        n = self.online[0].shape[0]
        n_glob = n * dist.world_size()
        rows = torch.arange(n, device=self.online[0].device) + dist.rank() * n
        cols = torch.arange(blocks * n_glob, device=rows.device) % n_glob
        return cols[None, :] == rows[:, None]


@dataclass(frozen=True)
class Term:
    """How a form computes its positive and negative terms from one :class:`Step`.

    ``kind``: ``loss`` or ``grad``. ``scope``: ``pair`` terms are called once per (online view,
    positive) pair and return the loss of that direction (loss forms) or its gradient g [N, C]
    w.r.t. the anchors (gradient forms); ``batch`` terms compute one loss over the whole (global)
    batch and take exactly the two global views. ``sets``: the sample sets the term can draw its
    negatives from (the first is its default): ``none``, ``batch``, ``bank`` (memory bank,
    ``step.negatives``) or ``ema`` (correlation matrix F, ``step.corr``). A subclass (a frozen
    dataclass) overrides :meth:`pair` or :meth:`batch`, and optionally :meth:`prepare`
    (per-step quantities), :meth:`positive` (a transform of the positives), :meth:`modules`
    (stateful or learnable parts, kept by the objective and seen as ``step.parts``) and
    :meth:`parts_loss` (their gradient in a gradient form).
    """

    kind: str  # "loss" | "grad"
    scope: str = "pair"
    sets: tuple[str, ...] = ("none",)
    takes_cutmix: bool = True  # False: a mixed image's positive cannot be mixed like it
    #: why this term's step cannot be recorded in a CUDA graph ("" where it can)
    cuda_graph_blocker: ClassVar[str] = ""

    def with_set(self, sample_set: str) -> Term:
        if sample_set not in self.sets:
            raise HyperparameterError(
                f"sample_set {sample_set!r} does not apply to this form; it takes "
                f"{' or '.join(self.sets)}"
            )
        return replace(self, sets=(sample_set, *tuple(s for s in self.sets if s != sample_set)))

    @property
    def sample_set(self) -> str:
        return self.sets[0]

    def modules(self, dim: int, hp: dict[str, Any]) -> dict[str, nn.Module]:
        """Learnable or stateful parts at width ``dim`` (name -> module); none by default."""
        return {}

    def prepare(self, step: Step) -> None:
        """Once per step, before the pairs (e.g. DirectPred's W_h from F)."""

    def positive(self, step: Step, pos: torch.Tensor) -> torch.Tensor:
        """The positive [N, C] of a pair from the normalised target(s) [N, C]."""
        return pos

    def pair(self, step: Step, i: int, u: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Online view ``i``'s anchors u [N, C] against ``pos`` [N, C]: a loss or g [N, C]."""
        raise NotImplementedError

    def batch(self, step: Step) -> torch.Tensor:
        """One loss over the global batch (``scope="batch"``)."""
        raise NotImplementedError

    def parts_loss(self, step: Step) -> torch.Tensor | None:
        """A scalar added to the objective after the pairs, whose gradient trains the term's
        own parts where the surrogate gives them none (a gradient form's prototypes); None by
        default."""
        return None
