"""The objective: a method spec + its sample-set state, turned into one scalar to backpropagate.

Symmetrisation lives here, once: an online view ``i`` is paired with the target views whose
(mean) embedding is its positive (:func:`pair_views`), and the loss is the mean over the pairs.
For two views that is L = (L(x1 -> x2) + L(x2 -> x1)) / 2. Multi-crop adds local views whose
positive is the mean of the two global targets; CutMix mixes a view's positive with the
positive of the image pasted into it.

Distributed: per-sample terms use this rank's anchors (DDP averages them); batch-wide terms
(NT-Xent, Barlow Twins, VICReg, batch normalisation) see the global batch through
:mod:`unigrad.core.dist` gathers. See :mod:`unigrad.core.dist` for why this gives exact gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unigrad.core import dist
from unigrad.core import gradients as G
from unigrad.core import losses as L
from unigrad.core.samples import CorrelationEMA, MemoryBank, directpred_predictor
from unigrad.core.targets import TargetOut
from unigrad.methods import MethodSpec, get_method

SYMMETRIES = ("sym", "asym", "asym2x")
#: Methods whose objective is one view predicting another (per-sample positives).
DIRECTIONAL = ("moco", "byol", "simsiam", "directpred", "unigrad")


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
    """How many leading views the target branch must embed."""
    return 4 if symmetry == "asym2x" else 2


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """Losses run in (at least) float32, also under bf16/fp16 autocast."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@dataclass
class Mix:
    """CutMix applied to online views ``views``: a fraction ``ratio`` [N] of each image is kept,
    the rest is pasted from sample ``perm`` [N]."""

    perm: torch.Tensor
    ratio: torch.Tensor
    views: tuple[int, ...] = (0, 1)


class Objective(nn.Module):
    """Loss of one method in one form, with its sample-set state as submodules.

    Args:
        method: a name in :data:`unigrad.methods.METHODS`.
        form: ``loss`` or ``grad`` (default: the method's).
        variant: gradient-form row (e.g. ``f``, ``g``, ``h`` for Barlow Twins).
        dim: embedding width C.
        symmetry: ``sym``, ``asym`` or ``asym2x`` (directional methods only).
        **hparams: overrides of the method's defaults (tau, lambd, rho, eps, bank_size,
            corr_source, sim_weight, var_weight, cov_weight, gamma, scale_loss); None means
            default.
    """

    def __init__(
        self,
        method: str,
        form: str | None = None,
        variant: str | None = None,
        *,
        dim: int,
        symmetry: str = "sym",
        **hparams: float | int | str | None,
    ) -> None:
        super().__init__()
        self.spec: MethodSpec = get_method(method)
        self.method = method
        self.kind = form or self.spec.default_form
        self.form = self.spec.form(self.kind, variant)
        if symmetry not in SYMMETRIES:
            raise ValueError(f"symmetry must be one of {SYMMETRIES}, got {symmetry!r}")
        if symmetry != "sym" and method not in DIRECTIONAL:
            raise ValueError(f"symmetry={symmetry} needs a directional method ({DIRECTIONAL})")
        self.symmetry = symmetry
        hp = dict(self.spec.hparams)
        hp.update({k: v for k, v in hparams.items() if v is not None})
        self.hp = hp
        lambd = hparams.get("lambd")
        self.lambd = float(lambd) if lambd is not None else self.form.default_lambda(dim)
        self.tau = float(hp.get("tau", 0.2))
        self.eps = float(hp.get("eps", 0.3))
        self.corr_source = str(hp.get("corr_source", "target"))
        scale = hp.get("scale_loss")
        self.scale_loss = float(scale) if scale is not None else self.form.default_scale(dim)
        if self.scale_loss <= 0:
            raise ValueError(f"scale_loss must be > 0, got {self.scale_loss}")
        if self.lambd is not None and self.lambd < 0:
            raise ValueError(f"lambd must be >= 0, got {self.lambd}")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.corr_source not in ("target", "online"):
            raise ValueError(f"corr_source must be target or online, got {self.corr_source!r}")
        self.bank = (
            MemoryBank(int(hp["bank_size"]), dim) if self.form.sample_set == "bank" else None
        )
        self.corr = CorrelationEMA(dim, float(hp["rho"])) if self.form.sample_set == "ema" else None
        self._pending: torch.Tensor | None = None

    def after_step(self) -> None:
        """Sample-set update that must wait until backward is done: enqueue this step's keys.

        (The loss saved the bank for its backward; pushing earlier would overwrite it.) The
        trainer calls this after the optimiser step; ``forward`` also calls it first, so a
        forgotten call only delays the update.
        """
        if self._pending is not None:
            self.bank.push(self._pending)
            self._pending = None

    # ----------------------------------------------------------------------------- helpers
    def _norm(self, z: torch.Tensor) -> torch.Tensor:
        """l2 or none; batch-standardised rows are handled by :meth:`_bn` (global batch)."""
        return F.normalize(z, dim=-1) if self.form.norm == "l2" else z

    @staticmethod
    def _gather(x: torch.Tensor) -> torch.Tensor:
        return dist.gather_with_grad(x) if x.requires_grad else dist.gather_no_grad(x)

    def _global(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings of the global batch [W*N, C] (BN statistics are global)."""
        full = self._gather(z)
        return L.batch_standardize(full) if self.form.norm == "bn" else self._norm(full)

    def _local(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings of this rank's rows [N, C]."""
        if self.form.norm == "bn":
            return self._global(z)[dist.local_slice(z.shape[0])]
        return self._norm(z)

    def _positives(
        self, pos: list[torch.Tensor], pairs: list[tuple[int, list[int]]], mix: Mix | None
    ) -> dict[int, torch.Tensor]:
        out = {}
        for i, js in pairs:
            p = pos[js[0]] if len(js) == 1 else torch.stack([pos[j] for j in js]).mean(0)
            if mix is not None and i in mix.views:
                r = mix.ratio.to(p.dtype).view(-1, 1)
                p = r * p + (1 - r) * p[mix.perm]
            out[i] = p
        return out

    def _corr_update(self, online: list[torch.Tensor], targets: TargetOut) -> torch.Tensor:
        assert self.corr is not None
        src = targets.neg if self.corr_source == "target" else online[: len(targets.neg)]
        return self.corr.update([F.normalize(_fp32(z.detach()), dim=-1) for z in src])

    # ----------------------------------------------------------------------------- forward
    def forward(
        self,
        online: list[torch.Tensor],
        targets: TargetOut,
        pred: list[torch.Tensor] | None = None,
        mix: Mix | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss for one step.

        Args:
            online: projector outputs z [N, C] per view (global views first).
            targets: target-branch outputs for the leading (global, unmixed) views.
            pred: predictor outputs [N, C] per view (BYOL, SimSiam).
            mix: CutMix bookkeeping, if the online views were mixed.

        Returns:
            (scalar to backpropagate, detached statistics: ``pos_sim`` and method-specific).
        """
        extra_views = len(online) > 2 and self.symmetry != "asym2x"
        if (mix is not None or extra_views) and self.method != "unigrad":
            raise ValueError("multi-crop and CutMix are implemented for unigrad only")
        self.after_step()
        online = [_fp32(z) for z in online]
        targets = TargetOut([_fp32(t) for t in targets.pos], [_fp32(t) for t in targets.neg])
        pred = [_fp32(p) for p in pred] if pred is not None else None
        pairs = pair_views(len(online), self.symmetry)
        stats: dict[str, torch.Tensor] = {}
        if self.method in ("simclr", "barlow_twins", "vicreg"):
            if len(online) != 2:
                raise ValueError(f"{self.method} takes exactly two views")
            loss = self._batch_method(online, targets, pairs, stats)
        else:
            loss = self._directional(online, targets, pred, pairs, mix, stats)
        return loss, stats

    def _directional(self, online, targets, pred, pairs, mix, stats) -> torch.Tensor:
        pos = self._positives([self._norm(t) for t in targets.pos], pairs, mix)
        anchors = pred if self.spec.predictor == "mlp" else online
        if anchors is None:
            raise ValueError(f"{self.method} needs predictor outputs")
        u = {i: self._norm(anchors[i]) for i, _ in pairs}
        stats["pos_sim"] = torch.stack([(u[i] * pos[i]).sum(-1).mean() for i in u]).mean().detach()
        m = self.method
        if m in ("byol", "simsiam"):
            fn = L.byol_loss if m == "byol" else L.negative_cosine
            return torch.stack([fn(u[i], pos[i]) for i in u]).mean()
        if m == "moco":
            negs = self.bank.negatives()
            if self.kind == "loss":
                loss = torch.stack([L.info_nce(u[i], pos[i], negs, self.tau) for i in u]).mean()
            else:
                loss = self._surrogates(
                    u, {i: G.grad_infonce(u[i], pos[i], negs, self.tau) for i in u}
                )
            # view by view, so the bank's row order does not depend on the number of ranks
            keys = [dist.gather_no_grad(self._norm(t.detach())) for t in targets.neg]
            self._pending = torch.cat(keys)  # enqueued by after_step()
            return loss
        corr = self._corr_update(online, targets)
        if m == "unigrad":
            if self.kind == "loss":
                return torch.stack(
                    [L.unigrad_loss(u[i], pos[i], corr, self.lambd) for i in u]
                ).mean()
            # all views in one product: [V, N, C] @ [C, C]
            uu, pp = torch.stack(list(u.values())), torch.stack([pos[i] for i in u])
            return G.surrogate(uu, G.grad_correlation(uu, pp, corr, self.lambd))
        # DirectPred
        if self.form.key == "e":
            return self._surrogates(
                u, {i: G.grad_correlation(u[i], pos[i], corr, self.lambd) for i in u}
            )
        w_h, sqrt_f, lam_max = directpred_predictor(corr, self.eps)
        if self.kind == "loss":
            return torch.stack([L.directpred_loss(u[i], pos[i], w_h) for i in u]).mean()
        g, lam = {}, []
        for i in u:
            g[i], li = G.grad_directpred(
                u[i], pos[i], corr, w_h, sqrt_f, lam_max, self.eps, variant=self._dp_variant
            )
            lam.append(li.mean())
        stats["lambda_dyn"] = torch.stack(lam).mean()
        return self._surrogates(u, g)

    @property
    def _vicreg_weights(self) -> dict[str, float]:
        return {k: float(self.hp[k]) for k in ("sim_weight", "var_weight", "cov_weight", "gamma")}

    @property
    def _dp_variant(self) -> str:
        return "eq28" if self.form.key == "d" else self.form.key

    @staticmethod
    def _surrogates(u: dict[int, torch.Tensor], g: dict[int, torch.Tensor]) -> torch.Tensor:
        return torch.stack([G.surrogate(u[i], g[i]) for i in u]).mean()

    def _batch_method(self, online, targets, pairs, stats) -> torch.Tensor:
        """SimCLR, Barlow Twins, VICReg: the sample set is the (global) current batch."""
        m = self.method
        stats["pos_sim"] = (
            torch.stack(
                [
                    F.cosine_similarity(online[i], targets.pos[js[0]], dim=-1).mean()
                    for i, js in pairs
                ]
            )
            .mean()
            .detach()
        )
        if m == "simclr":
            return self._simclr(online, targets, pairs)
        if self.kind == "loss":
            if m == "barlow_twins":
                terms = [
                    self.scale_loss
                    * L.barlow_twins_loss(
                        self._global(online[i]), self._global(targets.pos[j[0]]), self.lambd
                    )
                    for i, j in pairs
                ]
            else:
                w = self._vicreg_weights
                terms = [
                    L.vicreg_loss(self._gather(online[i]), self._gather(targets.pos[j[0]]), **w)
                    for i, j in pairs
                ]
            return torch.stack(terms).mean()
        g, u = {}, {}
        for i, (j,) in pairs:
            u[i] = self._local(online[i])
            pos = self._local(targets.pos[j].detach())
            v1 = self._global(online[i].detach())
            if m == "barlow_twins":
                w = L.cross_correlation(v1, self._global(targets.neg[j].detach()))
                g[i] = self.scale_loss * G.grad_barlow(
                    u[i], pos, w, self.lambd, full_a=self.form.key == "f"
                )
                stats["diag_max"] = torch.diagonal(w).max()
                stats["diag_min"] = torch.diagonal(w).min()
            elif self.form.key == "j":
                g[i] = 2.0 * G.grad_correlation(u[i], pos, v1.T @ v1 / v1.shape[0], self.lambd)
            else:
                h = self._vicreg_weights
                lam = self.lambd
                if lam is None:
                    lam = G.vicreg_balance(v1.shape[0], h["sim_weight"], h["cov_weight"])
                g[i] = G.grad_vicreg(u[i], pos, v1, lambd=lam, **h)
        return self._surrogates(u, g)

    def _simclr(self, online, targets, pairs) -> torch.Tensor:
        """NT-Xent over the global 2N views (loss) or row (b) for local anchors (grad)."""
        n = online[0].shape[0]
        negs = torch.cat([self._global(t) for t in targets.neg])  # [2 W N, C]
        n_glob = negs.shape[0] // 2
        mask = L.nt_xent_mask(n_glob, device=negs.device)
        if self.kind == "loss":
            anchors = torch.cat([self._global(online[i]) for i, _ in pairs])
            pos = torch.cat([self._global(targets.pos[j[0]]) for _, j in pairs])
            return L.info_nce(anchors, pos, negs, self.tau, mask)
        negs = negs.detach()
        local = torch.arange(n, device=negs.device) + dist.rank() * n
        u, g = {}, {}
        for i, (j,) in pairs:
            u[i] = self._norm(online[i])
            pos = self._norm(targets.pos[j]).detach()
            g[i] = G.grad_infonce(u[i], pos, negs, self.tau, mask[local + i * n_glob])
        return self._surrogates(u, g)
