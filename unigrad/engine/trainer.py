"""Pretraining, top to bottom: data and parts are built from the configuration, :meth:`Trainer.fit`
locks the run directory, opens (or resumes) the run, runs the loop with its callbacks and
evaluates.

Everything that influences the future is in the checkpoint (online and target weights, F or the
memory bank, optimiser and scaler state, step) and every random draw is a function of
(seed, step, rank) or (seed, epoch, index), so a run resumed from any step boundary continues
bit-identically (with deterministic kernels). The parts are in :mod:`unigrad.engine.parts`, the
step in :mod:`unigrad.engine.step`, the loop in :mod:`unigrad.engine.loop`, the periodic jobs in
:mod:`unigrad.engine.callbacks`; the lock, the finiteness rule and the choice of the checkpoint
to resume from in :mod:`unigrad.engine.resume`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from unigrad.config import Config, check_config, save_config
from unigrad.core import dist
from unigrad.core.clock import Clock
from unigrad.core.objective import target_views
from unigrad.data.evaluation import EvalData
from unigrad.data.pipeline import TrainData, build_train_data
from unigrad.engine import checkpoint as ckpt
from unigrad.engine.callbacks import Callback, Interrupted, LoopState, run_callbacks
from unigrad.engine.callbacks.base import callback_states, load_callback_states
from unigrad.engine.compiled import AutoStep, choose_step
from unigrad.engine.device import seed_everything, select_device
from unigrad.engine.files import check_writable, writing
from unigrad.engine.loop import run_loop
from unigrad.engine.parts import RunParts, build_parts
from unigrad.engine.profiling import NullTimer
from unigrad.engine.resume import (
    all_finite,
    good_checkpoint,
    load_resume_state,
    open_run,
    refuse_if_locked,
    set_aside_unreadable,
)
from unigrad.engine.runlog import RunLog
from unigrad.errors import UserError
from unigrad.eval.protocol import random_init_backbone, score_backbone
from unigrad.models.networks import CUSTOM

__all__ = ["Interrupted", "Trainer"]

#: Parts reachable as trainer attributes (``trainer.model`` is ``trainer.parts.model``).
_PART_NAMES = (
    "model", "net", "target", "objective", "optimizer", "scaler", "amp", "lr", "momentum",
    "peak_lr",
)  # fmt: skip


class Trainer:
    """Builds a run from a :class:`~unigrad.config.Config` and runs it with :meth:`fit`.

    The caller's ``cfg`` is never changed: the trainer works on a copy (``trainer.cfg``, with
    the values the run resolved, e.g. ``image_size`` from the data, ``amp_resolved``). With
    ``resume`` the newest good checkpoint of ``cfg.out`` is loaded here (``trainer.step``);
    nothing is written to ``cfg.out`` before :meth:`fit`, which takes the directory's lock.

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
        callbacks: periodic jobs of your own (:class:`~unigrad.engine.callbacks.Callback`),
            called after the built-in ones (``default_callbacks``) and before the checkpoints;
            their states are in the checkpoints and a resume restores them.
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
        callbacks: Sequence[Callback] = (),
    ) -> None:
        # a checked copy, as make_config checks (also for a Config built directly); the
        # backbone's name does not apply when a module is given
        cfg = check_config(replace(cfg, backbone="resnet18") if backbone is not None else cfg)
        if backbone is not None:
            cfg.backbone = CUSTOM
        self.cfg = cfg
        self.out = Path(cfg.out)
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"--out {self.out} is a file, not a directory; choose another --out")
        self.distributed = dist.setup_from_env(cfg.device)
        resume = resume or dist.restart_count() > 0  # a torchrun restart continues the run
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
        seed_everything(cfg.seed)
        self.show_progress = show_progress and dist.is_main()
        with dist.agreed_errors():  # one rank's refusal stops all, before DDP's collectives
            if dist.is_main():
                check_writable(self.out, "--out", folder=True)
                refuse_if_locked(self.out)  # before any work; fit() takes the lock
            self.device = select_device(cfg.device)
            run_data = build_train_data(cfg, self.device, train_data, val_data)
        cfg.image_size = run_data.image_size  # resolved from the data when unset (config.yaml)
        self.data: TrainData = run_data.train  # training views and the probe batch
        self.eval_data: EvalData | None = run_data.eval  # the kNN / linear splits
        self.steps_per_epoch = self.data.steps_per_epoch
        #: the length of the lr and EMA schedules: the epochs' (max_steps stops early within it)
        self.schedule_steps = self.steps_per_epoch * cfg.epochs
        #: the step the run stops at: ``max_steps`` where it comes first
        self.total_steps = min(self.schedule_steps, cfg.max_steps or self.schedule_steps)
        self.parts: RunParts = build_parts(
            cfg, self.device, self.data, self.schedule_steps, backbone, feat_dim
        )
        self.step_mode, self._step_fn = choose_step(cfg, self.parts, self.device)
        if self.step_mode != "auto":  # auto: recorded at its verdict (train_step)
            cfg.compile_resolved = self.step_mode
        self.n_target = target_views(self.data.n_views, cfg.symmetry)
        self.step = 0
        self.timer = NullTimer()  # bench/step_breakdown.py swaps in a SectionTimer
        self.log: RunLog | None = None
        self._lock: Any = None
        self._callbacks = run_callbacks(self, callbacks)
        self.resumed_from = self._resume() if resume else None
        self.loop_state = LoopState.of(self)  # what the callbacks see (and stop requests)

    # ------------------------------------------------------------------ the run directory
    def _resume(self) -> Path | None:
        """Load the newest good checkpoint; None (fresh start) when there is none yet."""
        path, self.step = load_resume_state(
            self.out, self.cfg, self.parts, self.schedule_steps, self.load_callback_states
        )
        if path is not None and dist.is_main():
            print(f"resumed from {path} at step {self.step}")
        return path

    def load_callback_states(self, state: dict[str, Any]) -> None:
        load_callback_states(self._callbacks, state)

    def _open_run(self) -> None:
        with writing(self.out, "choose another --out"):
            self._lock, self.log = open_run(
                self.out,
                self.cfg,
                resumed=self.resumed_from is not None,
                step=self.step,
                skipped=self.data.skipped,
            )
            if self.resumed_from is not None and dist.is_main():
                set_aside_unreadable(self.out, self.resumed_from)

    def close(self) -> None:
        """Close the run log and release the run directory's lock (also released when the
        process ends)."""
        log, self.log = self.log, None
        if log is not None:
            log.close()
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()

    def log_metrics(self, metrics: dict[str, float]) -> None:
        """Append ``metrics`` at the current step (no-op before :meth:`fit` opened the run)."""
        if self.log is not None:
            self.log.log(self.step, self.step / self.steps_per_epoch, metrics)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """A checkpoint's payload: the parts' (:meth:`RunParts.state_dict`), the schedules'
        length (what --resume must continue) and the callbacks' states."""
        state = self.parts.state_dict(self.cfg, self.step, self.steps_per_epoch)
        callbacks = callback_states(self._callbacks)
        return {**state, "schedule_steps": self.schedule_steps, "callbacks": callbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = self.parts.load_state_dict(state)
        self.load_callback_states(state)

    def save(self, name: str = "last.ckpt") -> Path:
        """Write a checkpoint; never one with non-finite weights, optimiser or objective state
        (exit 3 instead, naming the newest checkpoint that is really good)."""
        path = self.out / name
        state = self.state_dict()
        if self.parts.take_nonfinite():  # the step's device flag, read before every write
            self.diverged("loss", " (since the last log or checkpoint)")
        if not all_finite(state):
            self.diverged("weights, optimiser or objective state", "")
        with dist.agreed_errors():  # also the barrier: every rank may read it from here on
            if dist.is_main():
                ckpt.save_checkpoint(state, path, fix=f"continue with --out {self.out} --resume")
        return path

    def diverged(self, what: str, within: str) -> None:
        """Stop the run (exit 3) naming the step and the newest good checkpoint."""
        good = good_checkpoint(self.out)
        hint = f"last good checkpoint: {good}" if good else "no good checkpoint was written"
        raise UserError(
            f"non-finite {what} at step {self.step}{within}; {hint}. Lower base_lr or lambd, "
            "or disable amp.",
            exit_code=3,
        )

    # ------------------------------------------------------------------ training
    @property
    def clock(self) -> Clock:
        """The run's position: ``step`` steps done (the next step's index)."""
        return self.parts.clock.at(self.step)

    def train_step(
        self, views: list[torch.Tensor], gen: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """One optimisation step on a list of augmented views (global first)."""
        kw = {"n_target": self.n_target, "cutmix": self.cfg.cutmix}
        if isinstance(self._step_fn, AutoStep):  # compile: auto decides at the first step
            choice, self._step_fn = self._step_fn.decide(views, self.step, **kw)
            self._record_compile(choice)
        stats = self._step_fn(self.parts, views, gen, self.step, timer=self.timer, **kw)
        self.step += 1
        return stats

    def _record_compile(self, choice: str) -> None:
        """``compile: auto``'s verdict in ``cfg.compile_resolved``, and in config.yaml when a
        fresh run has written it already."""
        self.cfg.compile_resolved = choice
        record = self.out / "config.yaml"
        if self.step == 0 and dist.is_main() and record.is_file():
            save_config(self.cfg, record)

    def callbacks(self) -> list[Callback]:
        """The built-in jobs the configuration asks for, the caller's, and the checkpoints last
        (built once, with the trainer: their states travel in the checkpoints)."""
        return list(self._callbacks)

    def train(self) -> None:
        """The loop alone: train until ``total_steps`` with the callbacks (no final evaluation;
        the run directory must be open, as :meth:`fit` does)."""
        run_loop(self, self.callbacks())

    def fit(self) -> dict[str, float]:
        """Lock and open the run, train until ``total_steps``, then evaluate; returns the final
        metrics. SIGTERM/SIGINT stop the run at the next step boundary with a checkpoint
        (:class:`Interrupted`)."""
        try:
            self._open_run()
            self.train()
            return self.evaluate(final=True)
        finally:
            self.close()

    def evaluate(self, final: bool) -> dict[str, float]:
        """kNN monitor (every rank calls it, rank 0 scores); at the end optionally a linear
        probe on the same features and the random-init baseline."""
        out = score_backbone(
            self.eval_data, self.model.encoder.backbone, self.cfg, self.device, final
        )
        if final and self.cfg.knn_baseline and self.eval_data is not None:
            init = random_init_backbone(self.cfg, device=self.device)
            if init is not None:  # None: a custom module, which the config cannot rebuild
                out.update(
                    score_backbone(self.eval_data, init, self.cfg, self.device, final, "init_")
                )
        self.log_metrics(out)
        if out:
            epoch = self.step / self.steps_per_epoch
            tqdm.write(
                f"epoch {epoch:g} ({self.cfg.eval_split}): "
                + ", ".join(f"{k} {v:.2f}" for k, v in out.items())
            )
        return out


def _part(name: str) -> property:
    return property(lambda self: getattr(self.parts, name), doc=f"``trainer.parts.{name}``")


for _name in _PART_NAMES:
    setattr(Trainer, _name, _part(_name))
