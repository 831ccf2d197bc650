"""The generic objective: one form of one method, plus its sample-set state, turned into one
scalar to backpropagate. It names no method: what a form computes is its :class:`Term`.

What is common to every method lives here, once:

* float32 casting (losses run in fp32 also under bf16/fp16 autocast);
* normalisation (l2, batch standardisation over the *global* batch, none) and global gathers;
* pairing of views (:func:`pair_views`): online view i is paired with the target views whose
  (mean) embedding is its positive; the loss is the mean over the pairs, so for two views
  L = (L(x1 -> x2) + L(x2 -> x1)) / 2, and multi-crop's local views take the mean of the global
  targets as positive;
* CutMix: a mixed view's positive is mixed like its image, r * p + (1 - r) * p[perm];
* the sample sets: the memory bank (enqueued after the step), the EMA correlation matrix F
  (updated from the target or the online embeddings), the current batch;
* the surrogate of a gradient form, (g.detach() * u).sum(-1).mean(), whose gradient w.r.t. u is
  g / N (paper eq. 13); its *value* means nothing.

Distributed: per-sample terms use this rank's anchors (DDP averages them); batch-wide terms and
batch sample sets see the global batch through :mod:`unigrad.core.dist` gathers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unigrad.core import dist
from unigrad.core import gradients as G
from unigrad.core.clock import Clock
from unigrad.core.registry import get_method
from unigrad.core.samples import CorrelationEMA, MemoryBank
from unigrad.core.spec import Form, HyperparameterError, MethodSpec
from unigrad.core.targets import TargetOut
from unigrad.core.term import Step

SYMMETRIES = ("sym", "asym", "asym2x")


def pair_views(n_views: int, symmetry: str = "sym") -> list[tuple[int, list[int]]]:
    """(online view, target views averaged into its positive) pairs.

    ``sym``: 0 <- 1, 1 <- 0, and every further (local) view <- mean(0, 1).
    ``asym``: 0 <- 1 only. ``asym2x``: two asymmetric pairs, 0 <- 1 and 2 <- 3 (4 views).
    """
    if symmetry == "asym":
        return [(0, [1])]
    if symmetry == "asym2x":
        return [(0, [1]), (2, [3])]
    return [(0, [1]), (1, [0])] + [(k, [0, 1]) for k in range(2, n_views)]


def target_views(n_views: int, symmetry: str = "sym") -> int:
    """How many leading (global) views the target branch must embed."""
    return 4 if symmetry == "asym2x" else 2


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@dataclass
class Mix:
    """CutMix applied to online views ``views``: a fraction ``ratio`` [N] of each image is kept,
    the rest is pasted from sample ``perm`` [N]."""

    perm: torch.Tensor
    ratio: torch.Tensor
    views: tuple[int, ...] = (0, 1)


def check_parts(
    spec: MethodSpec,
    form: Form,
    *,
    target: str,
    n_views: int = 2,
    symmetry: str = "sym",
    cutmix: bool = False,
    hp: dict[str, Any] | None = None,
) -> None:
    """Refuse combinations of parts that cannot work, naming what would (raises
    :class:`HyperparameterError`)."""
    if symmetry not in SYMMETRIES:
        raise HyperparameterError(f"symmetry must be one of {', '.join(SYMMETRIES)}")
    if symmetry != "sym" and form.sample_set == "batch":
        raise HyperparameterError(
            f"symmetry={symmetry} needs a per-sample objective; {spec.name} {form.kind} "
            "draws its negatives from the batch"
        )
    local = n_views > target_views(n_views, symmetry)
    if (local or cutmix) and form.term.scope != "pair":
        what = "multi-crop" if local else "cutmix"
        raise HyperparameterError(
            f"{what} needs per-sample terms; the {spec.name} loss form is one loss over the "
            "whole batch of two views: use --form grad (every gradient form takes local views "
            "and CutMix)"
        )
    if cutmix and not form.term.takes_cutmix:
        raise HyperparameterError(
            f"cutmix does not apply to {spec.name}: its positive is a code computed over the "
            "batch, which a mixed image cannot take by area; remove cutmix"
        )
    if cutmix and symmetry == "asym2x":
        raise HyperparameterError("symmetry=asym2x takes neither multi_crop nor cutmix")
    if cutmix and target not in ("momentum", "snapshot"):
        raise HyperparameterError(
            "cutmix needs a momentum or snapshot target (positives come from unmixed images)"
        )
    if cutmix and form.sample_set == "ema" and (hp or {}).get("corr_source") != "target":
        raise HyperparameterError("cutmix needs corr_source=target (F from unmixed embeddings)")


class Objective(nn.Module):
    """Loss of one method in one form, with its sample-set state as submodules.

    Args:
        method: a registered name (:data:`unigrad.core.registry.METHODS`, ``unigrad methods``)
            or a :class:`MethodSpec` built in one's own code.
        form: ``loss`` or ``grad`` (default: the method's).
        variant: gradient-form row (e.g. ``f``, ``g``, ``h`` for Barlow Twins).
        dim: embedding width C.
        symmetry: ``sym``, ``asym`` or ``asym2x`` (per-sample objectives only).
        sample_set: draw the negatives from another sample set the form's term supports
            (e.g. ``bank`` for SimCLR's row b: the contrastive negative over a memory bank).
        target: the target branch kind that will feed it (default: the method's), for the
            checks of CutMix.
        **hparams: the method's hyperparameters (``unigrad methods`` lists them); None means
            default. An unknown or invalid one raises with its name.

    State (move the objective to the device, save its ``state_dict()`` with the model's):
    ``bank`` (memory bank, [K, C], and ``bank.pending``: the keys of the last call that
    :meth:`after_step` has not enqueued yet) or ``corr`` (EMA correlation matrix F, [C, C]) where
    the form uses one, and ``parts`` (learnable or stateful parts of a term; pass
    ``objective.parameters()`` to the optimiser).
    """

    def __init__(
        self,
        method: str | MethodSpec,
        form: str | None = None,
        variant: str | None = None,
        *,
        dim: int,
        symmetry: str = "sym",
        sample_set: str | None = None,
        target: str | None = None,
        **hparams: Any,
    ) -> None:
        super().__init__()
        if isinstance(method, str):
            try:
                method = get_method(method)
            except KeyError as e:
                raise HyperparameterError(str(e.args[0])) from None
        self.spec = method
        self.method = method.name
        try:
            f = method.form(form, variant)
        except KeyError as e:
            raise HyperparameterError(str(e.args[0])) from None
        if sample_set is not None:
            f = f.with_set(sample_set)
        self.form = f
        self.kind = f.kind
        self.term = f.term
        self.hp = method.resolve(f, dim, hparams)
        self.target_kind = target or method.target
        check_parts(method, f, target=self.target_kind, symmetry=symmetry, hp=self.hp)
        self.symmetry = symmetry
        self.dim = dim
        s = f.sample_set
        self.bank = MemoryBank(int(self.hp["bank_size"]), dim) if s == "bank" else None
        self.corr = CorrelationEMA(dim, float(self.hp["rho"])) if s == "ema" else None
        self.parts = nn.ModuleDict(self.term.modules(dim, self.hp))
        self.stats: dict[str, torch.Tensor] = {}
        self.calls = 0  # the step index a term sees when forward() is not given one

    @classmethod
    def from_config(cls, cfg: Any) -> Objective:
        """The objective a :class:`unigrad.config.Config` describes."""
        return cls(
            cfg.method,
            cfg.form,
            cfg.variant,
            dim=cfg.proj_dim,
            symmetry=cfg.symmetry,
            sample_set=cfg.sample_set,
            target=cfg.target,
            **cfg.hparams,
        )

    @property
    def lambd(self) -> float | None:
        return self.hp.get("lambd")

    def after_step(self) -> None:
        """Sample-set update that must wait until backward is done: enqueue this step's keys.

        (The loss saved the bank for its backward; pushing earlier would overwrite it.) Call it
        after the optimiser step; ``forward`` also calls it first, so a forgotten call only
        delays the update.
        """
        if self.bank is not None:
            self.bank.flush()

    @torch.no_grad()
    def follow_target_(self, weight: float | torch.Tensor) -> None:
        """The target branch's EMA step for the parts that keep a teacher copy (DINO's last
        layer): ``copy <- copy + weight (online - copy)``, ``weight`` = 1 - m (1: a target
        without an EMA). The trainer calls it right after the target's EMA; in one's own loop
        call it after ``target.update(encoder, m, step)`` (a no-op for the other methods)."""
        for part in self.parts.values():
            follow = getattr(part, "follow_target_", None)
            if follow is not None:
                follow(weight)

    def forward(
        self,
        online: list[torch.Tensor] | torch.Tensor,
        *more: torch.Tensor | TargetOut | list[torch.Tensor],
        targets: TargetOut | list[torch.Tensor] | None = None,
        pred: list[torch.Tensor] | None = None,
        mix: Mix | None = None,
        step: Clock | int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The scalar to backpropagate for one step; statistics go to ``self.stats``.

        Args:
            online: projector outputs z [N, C] per view (global views first), as a list
                (``objective([z0, z1], targets)``) or as separate tensors (``objective(z0, z1)``).
            targets: target-branch outputs of the global views: a :class:`TargetOut`, or a list
                of tensors used as positives and negatives (e.g. a momentum encoder's outputs,
                computed under ``torch.no_grad()``). None: the online outputs themselves (a shared
                target, SimCLR / Barlow Twins / VICReg style).
            pred: predictor outputs [N, C] per view, for methods with a learned predictor.
            mix: CutMix bookkeeping, if the online views were mixed.
            step: where the run is, seen by terms as ``Step.clock`` and by the method's
                schedules: a :class:`Clock` (the trainer passes one; under ``compile: step`` its
                ``step`` is a 0-d integer tensor, so a compiled graph has no int input to
                specialise or to key CUDA graphs on), or a bare step (int or 0-d tensor: a clock
                of one-step epochs); default: the number of earlier calls of this objective.

        For a gradient form the returned value is a surrogate whose gradient is the paper's
        gradient; its value carries no meaning (log ``self.stats`` instead).
        """
        if isinstance(online, torch.Tensor):
            views = [online, *more]
            if not all(isinstance(v, torch.Tensor) for v in views):
                raise TypeError("pass the targets as targets=..., after the view tensors")
        else:
            views = list(online)
            if len(more) > 1 or (more and targets is not None):
                raise TypeError("call objective(views, targets) or objective(z0, z1, targets=...)")
            targets = more[0] if more else targets
        n_t = target_views(len(views), self.symmetry)
        if targets is None:
            if self.target_kind != "shared":
                raise ValueError(
                    f"{self.method} takes its positives from a {self.target_kind} target branch: "
                    f"pass targets=target(views, z) of a TargetBranch({self.target_kind!r}, "
                    "encoder) or targets=[t0, t1]; objective(z0, z1) alone is for a shared "
                    "target (Objective(..., target='shared') to train this method so)"
                )
            targets = TargetOut(pos=views[:n_t], neg=views[:n_t])
        elif not isinstance(targets, TargetOut):
            targets = TargetOut(pos=list(targets), neg=list(targets))
        check_parts(
            self.spec,
            self.form,
            target=self.target_kind,
            n_views=len(views),
            symmetry=self.symmetry,
            cutmix=mix is not None,
            hp=self.hp,
        )
        if self.spec.needs.has_predictor and pred is None:
            raise ValueError(f"{self.method} needs the predictor outputs: pass pred=[p0, p1, ...]")
        self.after_step()
        if step is None:
            clock, self.calls = Clock(self.calls), self.calls + 1
        elif isinstance(step, Clock):
            clock = step
        else:
            clock = Clock(step if isinstance(step, torch.Tensor) else int(step))
        step = Step(
            online=[_fp32(z) for z in views],
            targets=TargetOut([_fp32(t) for t in targets.pos], [_fp32(t) for t in targets.neg]),
            pred=[_fp32(p) for p in pred] if pred is not None else None,
            pairs=pair_views(len(views), self.symmetry),
            hp=self.spec.needs.scheduled(self.hp, clock),
            normalization=self.form.norm,
            clock=clock,
            parts=self.parts,
        )
        self._update_sets(step)
        step.stats["pos_sim"] = self._pos_sim(step)
        self.term.prepare(step)
        loss = self.term.batch(step) if self.term.scope == "batch" else self._pairs(step, mix)
        self.stats = {k: v.detach() for k, v in step.stats.items()}
        return loss

    # ----------------------------------------------------------------------------- parts
    def _update_sets(self, step: Step) -> None:
        if self.corr is not None:
            src = step.targets.neg
            if self.hp["corr_source"] == "online":
                src = step.online[: step.n_global]
            step.corr = self.corr.update([F.normalize(z.detach(), dim=-1) for z in src])
        if self.bank is not None:
            step.negatives = self.bank.negatives()
            # view by view, so the bank's row order does not depend on the number of ranks
            keys = [dist.gather_no_grad(step.norm(t.detach())) for t in step.targets.neg]
            self.bank.stage(torch.cat(keys))  # enqueued by after_step()

    @staticmethod
    def _pos_sim(step: Step) -> torch.Tensor:
        """Cosine between the global online anchors and their targets (a statistic)."""
        anchors = step.pred if step.pred is not None else step.online
        sims = [
            F.cosine_similarity(anchors[i].detach(), step.targets.pos[js[0]].detach(), dim=-1)
            for i, js in step.global_pairs
        ]
        return torch.stack([s.mean() for s in sims]).mean()

    def _positives(self, step: Step, mix: Mix | None) -> dict[int, torch.Tensor]:
        normed: dict[int, torch.Tensor] = {}
        out = {}
        for i, js in step.pairs:
            for j in js:
                if j not in normed:
                    normed[j] = step.norm(step.targets.pos[j])
            p = normed[js[0]] if len(js) == 1 else torch.stack([normed[j] for j in js]).mean(0)
            p = self.term.positive(step, p)
            if mix is not None and i in mix.views:
                r = mix.ratio.to(p.dtype).view(-1, 1)
                p = r * p + (1 - r) * p[mix.perm]
            out[i] = p
        return out

    def _pairs(self, step: Step, mix: Mix | None) -> torch.Tensor:
        pos = self._positives(step, mix)
        anchors = step.pred if self.spec.needs.has_predictor else step.online
        terms = []
        for i, _ in step.pairs:
            u = step.norm(anchors[i])
            out = self.term.pair(step, i, u, pos[i])
            terms.append(G.surrogate(u, out) if self.kind == "grad" else out)
        loss = torch.stack(terms).mean()
        extra = self.term.parts_loss(step)
        return loss if extra is None else loss + extra
