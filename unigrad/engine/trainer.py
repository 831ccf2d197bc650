"""Pretraining loop, top to bottom: schedule -> views -> forward -> loss -> backward -> EMA -> log.

Everything that influences the future is in the checkpoint (online and target weights, F or the
memory bank, optimiser and scaler state, step) and every random draw is a function of
(seed, step, rank) or (seed, epoch, index), so a run resumed from any step boundary continues
bit-identically (with deterministic kernels). The run-directory lock, the finiteness rule and
the choice of the checkpoint to resume from are in :mod:`unigrad.engine.resume`; the kNN /
linear evaluation and the random-init baseline in :mod:`unigrad.engine.evaluation`.
"""

from __future__ import annotations

import dataclasses
import math
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from unigrad.config import Config, default_warmup, save_config, to_dict
from unigrad.core import dist
from unigrad.core.objective import Mix, Objective, target_views
from unigrad.core.targets import TargetBranch, cosine_momentum
from unigrad.data.pipeline import TrainData, build_train_data, step_generator
from unigrad.engine import checkpoint as ckpt
from unigrad.engine.device import resolve_amp, select_device
from unigrad.engine.evaluation import random_init_backbone, scores
from unigrad.engine.optim import build_optimizer, lr_schedule, set_lr
from unigrad.engine.profiling import NullTimer
from unigrad.engine.resume import all_finite, find_resume_state, good_checkpoint, lock_run_dir
from unigrad.engine.runlog import RunLog
from unigrad.errors import UserError
from unigrad.methods import get_method
from unigrad.models.networks import CUSTOM, build_model


class Interrupted(Exception):
    """Raised at a step boundary after SIGTERM/SIGINT, once the checkpoint is written."""

    def __init__(self, signum: int, path: Path) -> None:
        super().__init__(f"stopped by signal {signum}; checkpoint written to {path}")
        self.signum = signum


class Trainer:
    """Builds everything from a :class:`~unigrad.config.Config` and runs :meth:`fit`.

    Your own parts, in place of the config's (keyword-only):
        backbone: a module [B, 3, H, W] -> [B, feat_dim], trained in place (``cfg.backbone``
            becomes ``custom``; ``width``/``cifar_stem`` do not apply). Its weights are in the
            checkpoints; to resume, pass a module of the same architecture again.
        feat_dim: the backbone's output width (optional when it has ``num_features``).
        train_data: in place of ``cfg.data`` / ``cfg.dataset``: a Dataset of images (items
            ``img`` or ``(img, label)``; PIL or [3, H, W] uint8/float), augmented by unigrad,
            or a DataLoader of ready views (see :class:`~unigrad.data.pipeline.GivenLoaderData`).
        val_data: a labelled Dataset for the kNN / linear evaluation (train_data then needs
            labels too); without it no evaluation is run.
    """

    def __init__(
        self,
        cfg: Config,
        resume: bool = False,
        show_progress: bool = True,
        *,
        backbone: nn.Module | None = None,
        feat_dim: int | None = None,
        train_data: Dataset | DataLoader | None = None,
        val_data: Dataset | None = None,
    ) -> None:
        if backbone is not None:
            cfg = dataclasses.replace(cfg, backbone=CUSTOM)
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.spec = get_method(cfg.method)
        self.distributed = dist.setup_from_env()
        # one process per run directory, taken before any work (released if __init__ fails)
        self._lock = lock_run_dir(self.out) if dist.is_main() else None
        try:
            self._setup(cfg, resume, show_progress, (backbone, feat_dim), (train_data, val_data))
        except BaseException:
            self.close()
            raise

    def _setup(
        self,
        cfg: Config,
        resume: bool,
        show_progress: bool,
        own_net: tuple[nn.Module | None, int | None],  # (backbone, feat_dim)
        own_data: tuple[Any, Any],  # (train_data, val_data)
    ) -> None:
        self.device = select_device(cfg.device)
        world = dist.world_size()
        if cfg.batch_size % world:
            raise UserError(
                f"batch_size {cfg.batch_size} is not divisible by the world size "
                f"{world}; pick a multiple of {world}"
            )
        if cfg.batch_size // world < 2:
            raise UserError(f"batch_size {cfg.batch_size} leaves fewer than 2 samples per rank")
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        self.show_progress = show_progress and dist.is_main()

        self.data: TrainData = build_train_data(cfg, self.device, *own_data)
        self.steps_per_epoch = self.data.steps_per_epoch
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)

        self.model = build_model(
            cfg.backbone if own_net[0] is None else own_net[0],
            cfg.width,
            cfg.cifar_stem,
            cfg.proj_depth,
            cfg.proj_dim,
            cfg.proj_hidden,
            predictor=self.spec.predictor == "mlp",
            pred_hidden=cfg.pred_hidden,
            image_size=cfg.image_size,
            norm=cfg.norm,
            feat_dim=own_net[1],
        )
        if cfg.sync_bn and self.distributed:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.target_kind = cfg.target or self.spec.target
        self.target = TargetBranch(
            self.target_kind, self.model.encoder, cfg.snapshot_every or self.steps_per_epoch
        )
        self.objective = Objective.from_config(cfg).to(self.device)
        self.net: nn.Module = self.model
        if self.distributed:
            self.net = DDP(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if cfg.compile:
            self.net = torch.compile(self.net)

        self.peak_lr = cfg.base_lr * cfg.batch_size / 256
        fixed = cfg.predictor_fixed_lr
        if fixed is None:
            fixed = bool(self.spec.train_defaults.get("predictor_fixed_lr", False))
        self.optimizer = build_optimizer(
            self.model,
            cfg.optimizer,
            self.peak_lr,
            cfg.weight_decay,
            cfg.sgd_momentum,
            bias_lr_scale=(cfg.base_lr_bias or cfg.base_lr) / cfg.base_lr,
            predictor_fixed_lr=fixed,
            predictor_lr_scale=cfg.predictor_lr_scale,
            objective=self.objective,
        )
        warmup_epochs = (
            default_warmup(cfg.epochs) if cfg.warmup_epochs is None else cfg.warmup_epochs
        )
        warmup = round(warmup_epochs * self.steps_per_epoch)
        self.lr = lr_schedule(self.peak_lr, self.total_steps, warmup, cfg.min_lr_ratio)
        base_m = cfg.momentum_base
        if base_m is None:
            base_m = float(self.spec.train_defaults.get("momentum_base", 0.996))
        self.momentum = cosine_momentum(base_m, cfg.momentum_final, self.total_steps)
        self.amp = resolve_amp(
            cfg, self.model, self.device, max(2, min(8, cfg.batch_size // world))
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.step = 0
        self.n_views = self.data.n_views
        self.n_target = target_views(self.n_views, cfg.symmetry)
        self._stop_signal: int | None = None
        self.timer = NullTimer()  # bench/step_breakdown.py swaps in a SectionTimer

        self._open_run(resume)

    def _open_run(self, resume: bool) -> None:
        """Run log, config.yaml, and the resume (or the check that RUN holds no other run)."""
        cfg = self.cfg
        self.log = RunLog(self.out, cfg.tensorboard)
        if self.data.skipped and dist.is_main():
            print(
                f"warning: {self.data.skipped} unreadable training images skipped "
                "(bad_images=skip; logged as data/skipped_images)",
                file=sys.stderr,
            )
        if not (resume and self._resume()):
            if not resume and ckpt.candidates(self.out):
                raise UserError(
                    f"{self.out} already holds a run (*.ckpt); pass --resume to continue it or "
                    "choose another --out"
                )
            self.log.truncate_after(0)
            if dist.is_main():
                save_config(cfg, self.out / "config.yaml")
            self.log.log(0, 0.0, {"data/skipped_images": float(self.data.skipped)})

    def close(self) -> None:
        """Release the run directory's lock (also released when the process ends)."""
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.close()

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": to_dict(self.cfg),
            "model": self.model.state_dict(),
            "target": self.target.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "rng": {
                "torch": torch.get_rng_state(),
                "python": list(random.getstate()[1]),
                "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.target.load_state_dict(state["target"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"])

    def save(self, name: str = "last.ckpt") -> Path:
        """Write a checkpoint; never one with non-finite weights, optimiser or objective state
        (exit 3 instead, naming the newest checkpoint that is really good)."""
        path = self.out / name
        state = self.state_dict()
        if not all_finite(state):
            self._diverged("weights, optimiser or objective state", "")
        if dist.is_main():
            ckpt.save_checkpoint(state, path)
        dist.barrier()
        return path

    def _diverged(self, what: str, within: str) -> None:
        good = good_checkpoint(self.out)
        hint = f"last good checkpoint: {good}" if good else "no good checkpoint was written"
        raise UserError(
            f"non-finite {what} at step {self.step}{within}; {hint}. Lower base_lr or lambd, "
            "or disable amp.",
            exit_code=3,
        )

    def _resume(self) -> bool:
        """Load the newest good checkpoint; False (fresh start) when there is none yet."""
        found = find_resume_state(self.out, self.cfg)
        if found is None:
            return False
        path, state = found
        try:
            self.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as e:
            raise UserError(f"{path} does not match this model: {str(e).splitlines()[0]}") from None
        self.log.truncate_after(self.step)
        if dist.is_main():
            print(f"resumed from {path} at step {self.step}")
        return True

    # ------------------------------------------------------------------ one step
    def train_step(
        self, views: list[torch.Tensor], gen: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """One optimisation step on a list of augmented views (global first)."""
        set_lr(self.optimizer, float(self.lr[self.step]), self.peak_lr)
        online_views, mix = views, None
        if self.cfg.cutmix:
            from unigrad.data.augment import cutmix

            with self.timer("cutmix"):
                online_views, perm, ratio = cutmix(views, gen)
                mix = Mix(perm, ratio)
        with torch.autocast(
            self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
        ):
            with self.timer("online forward"):
                z, p = self.net(online_views)
            with self.timer("target forward"):
                targets = self.target(views[: self.n_target], z[: self.n_target])
            with self.timer("loss + sample set"):
                loss = self.objective(z, targets=targets, pred=p, mix=mix)
                stats = dict(self.objective.stats)
        with self.timer("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        with self.timer("optimizer"):
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.step += 1
        with self.timer("EMA update"):
            self.target.update(self.model.encoder, float(self.momentum[self.step - 1]), self.step)
        with self.timer("loss + sample set"):
            self.objective.after_step()
        stats["loss"] = loss.detach()
        return stats

    # ------------------------------------------------------------------ loop
    def _handle_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signum

    def fit(self) -> dict[str, float]:
        """Train until ``total_steps``, then evaluate; returns the final metrics.

        SIGTERM/SIGINT are caught: the run stops at the next step boundary with a checkpoint
        (:class:`Interrupted`).
        """
        old = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._loop()
            return self.evaluate(final=True)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self.log.close()
            self.close()

    def _loop(self) -> None:
        cfg = self.cfg
        window: dict[str, list[torch.Tensor]] = {}
        t0, n_img = time.perf_counter(), 0
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not self.show_progress,
            unit="step",
            dynamic_ncols=True,
            desc=f"{cfg.method}/{self.objective.kind}",
        )
        while self.step < self.total_steps:
            epoch = self.step // self.steps_per_epoch
            start = self.step - epoch * self.steps_per_epoch
            augment_gen = lambda s: step_generator(cfg.seed, s, per_rank=False)  # noqa: E731
            for views in self.data.epoch(epoch, start, augment_gen):
                stats = self.train_step(views, step_generator(cfg.seed, self.step, salt=1))
                if self.device.type == "cpu" and not math.isfinite(float(stats["loss"])):
                    self._diverged("loss", "")  # free on the CPU; elsewhere checked in _flush
                for k, v in stats.items():
                    window.setdefault(k, []).append(v)
                n_img += views[0].shape[0] * dist.world_size()
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    logged = self._flush(window, n_img / (time.perf_counter() - t0))
                    shown = ("loss", "pos_sim", "lr", "img_per_s")
                    bar.set_postfix({k: f"{logged[k]:.3g}" for k in shown if k in logged})
                    window, t0, n_img = {}, time.perf_counter(), 0
                if cfg.diag_every and self.step % cfg.diag_every == 0:
                    self._diagnostics()
                mid_epoch = self.step % self.steps_per_epoch != 0  # epoch ends save below
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and mid_epoch:
                    self.save()
                if self._stop_signal is not None:
                    bar.close()
                    raise Interrupted(self._stop_signal, self.save())
                if self.step >= self.total_steps:
                    break
            epoch_done = self.step // self.steps_per_epoch
            self.save()
            if cfg.keep_epoch_ckpts and self.step % self.steps_per_epoch == 0:
                self.save(f"epoch-{epoch_done:04d}.ckpt")
            if self.objective.corr is not None and dist.is_main():
                from unigrad.eval.diagnostics import corr_spectrum, write_spectrum

                write_spectrum(self.out, self.step, corr_spectrum(self.objective.corr.F))
            if cfg.knn_every and epoch_done % cfg.knn_every == 0 and self.step < self.total_steps:
                self.evaluate(final=False)
            t0, n_img = time.perf_counter(), 0  # evaluation time is not training throughput
        bar.close()

    def _flush(self, window: dict[str, list[torch.Tensor]], img_s: float) -> dict[str, float]:
        means = {k: float(torch.stack(v).float().mean()) for k, v in window.items()}
        if not all(np.isfinite(v) for v in means.values()):
            bad = [k for k, v in means.items() if not np.isfinite(v)]
            self._diverged(", ".join(bad), f" (within the last {self.cfg.log_every} steps)")
        if self.objective.kind == "grad":
            means.pop("loss", None)  # the surrogate's value carries no meaning
        means["lr"] = float(self.lr[self.step - 1])
        means["momentum"] = float(self.momentum[self.step - 1])
        means["img_per_s"] = img_s
        self.log.log(self.step, self.step / self.steps_per_epoch, means)
        return means

    def _diagnostics(self) -> None:
        from unigrad.eval.diagnostics import frozen_bn_stats, probe_diagnostics

        views = self.data.probe(self.cfg.probe_size)
        with torch.no_grad(), frozen_bn_stats(self.model):
            z, _ = self.model(views[:2])
            t = self.target(views[:2], z)
        extra: dict[str, Any] = {}
        if self.objective.corr is not None:
            extra["corr"] = self.objective.corr.F
        metrics = probe_diagnostics(z, t.pos, extra)
        self.log.log(
            self.step,
            self.step / self.steps_per_epoch,
            {f"diag/{k}": v for k, v in metrics.items()},
        )

    def evaluate(self, final: bool) -> dict[str, float]:
        """kNN monitor on the eval split (rank 0); at the end optionally a linear probe on the
        same features and the random-init baseline."""
        if not dist.is_main():
            return {}
        linear = final and self.cfg.final_linear_epochs > 0
        out = scores(self.data, self.model.encoder.backbone, self.cfg, linear)
        if final and self.cfg.knn_baseline and out:
            init = random_init_backbone(self.cfg, self.device)
            if init is not None:  # None: a custom module, which the config cannot rebuild
                out.update(scores(self.data, init, self.cfg, linear, "init_"))
        self.log.log(self.step, self.step / self.steps_per_epoch, out)
        if out:
            epoch = self.step / self.steps_per_epoch
            tqdm.write(
                f"epoch {epoch:g} ({self.cfg.eval_split}): "
                + ", ".join(f"{k} {v:.2f}" for k, v in out.items())
            )
        return out
