"""The built parts of a run: networks, target branch, objective, optimiser, scaler and the
schedules, with one ``state_dict``. Built from a :class:`~unigrad.config.Config` by
:func:`build_parts`; the loop (:mod:`unigrad.engine.loop`) and the step
(:mod:`unigrad.engine.step`) only use them.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from unigrad.config import Config, to_dict
from unigrad.core import dist
from unigrad.core.clock import Clock
from unigrad.core.hooks import Action, Bound, StepHooks
from unigrad.core.needs import HookContext, Needs
from unigrad.core.objective import Mix, Objective
from unigrad.core.targets import TargetBranch, cosine_momentum
from unigrad.data.pipeline import TrainData
from unigrad.engine.device import guard_cpu_convs, resolve_amp
from unigrad.engine.optim import build_optimizer, clip_grad_norm, lr_schedule, wd_schedule
from unigrad.errors import UserError
from unigrad.models.build import model_from_config, record_method
from unigrad.models.networks import SiameseModel, is_timm


@dataclass
class RunParts:
    """Everything a step changes or reads, and its schedules (one value per step).

    ``model``: the online network (backbone, projector, predictor); ``net``: the module the step
    calls (``model``, wrapped in DDP; compiled by ``compile: model``,
    :func:`unigrad.engine.compiled.choose_step`); ``target``: the target branch;
    ``objective``: the loss with its sample-set state; ``lr`` / ``momentum`` / ``wd``: the
    schedules, one Python float per step (read by the step without touching a device; ``wd``
    None: the weight decay is constant); ``amp``: the
    autocast dtype or None (fp32). ``nonfinite``: a device flag, set by the step when a loss is
    not finite and read only at log boundaries and before checkpoint writes
    (:meth:`take_nonfinite`), so the step never waits on the host.
    """

    model: SiameseModel
    net: nn.Module
    target: TargetBranch
    objective: Objective
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    lr: list[float]
    momentum: list[float]
    peak_lr: float
    amp: torch.dtype | None
    nonfinite: torch.Tensor | None = None
    #: the last step's CutMix of the online views (None: not mixed); the probe's labels follow it
    mix: Mix | None = None
    #: actions after backward / after the optimiser step (the run's, then the method's)
    hooks: StepHooks = field(default_factory=StepHooks)
    #: the weight decay per step (DINO's cosine), or None: constant (set where ``lr`` is set)
    wd: list[float] | None = None
    #: the run's lengths (steps per epoch, total steps); ``clock.at(k)`` is step k's clock
    clock: Clock = field(default_factory=Clock)

    def mark_nonfinite(self, loss: torch.Tensor) -> None:
        """Fold ``~isfinite(loss)`` into the device flag (no host sync)."""
        bad = ~torch.isfinite(loss.detach())
        self.nonfinite = bad if self.nonfinite is None else self.nonfinite | bad

    def take_nonfinite(self) -> bool:
        """Whether a loss since the last call was not finite (one host read), and reset. In a
        distributed run: on any rank (every rank calls it at the same points, so all stop)."""
        flag, self.nonfinite = self.nonfinite, None
        if dist.is_dist():
            return bool(dist.any_rank(flag if flag is not None else False))
        return flag is not None and bool(flag)

    def state_dict(self, cfg: Config, step: int, steps_per_epoch: int) -> dict[str, Any]:
        """A checkpoint's payload: every state that influences the future, and the RNGs."""
        return {
            "config": to_dict(cfg),
            "model": self.model.state_dict(),
            "target": self.target.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": step,
            "epoch": step // steps_per_epoch,
            "rng": {
                "torch": torch.get_rng_state(),
                "python": list(random.getstate()[1]),
                "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restore from a checkpoint's payload; returns its step."""
        self.model.load_state_dict(state["model"])
        self.target.load_state_dict(state["target"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        return int(state["step"])


def note_small_views(cfg: Config, smallest: int) -> None:
    """One note where a torchvision ResNet with the ImageNet stem (stride 32) gets views of
    16 px or less: layer4 then sees 1 x 1 maps, too small to learn from, and PyTorch's bf16
    stride-2 convolution on a 1 x 1 input (CPU) writes non-finite weight gradients at random
    (BENCHMARKS §2)."""
    resnet = cfg.backbone.startswith("resnet") and not cfg.cifar_stem
    if resnet and smallest <= 16 and dist.is_main():
        print(
            f"note: views of {smallest} px reach layer4 of {cfg.backbone} at 1x1 with the "
            "ImageNet stem (and can give non-finite gradients in bf16 on a CPU); use "
            "--set cifar_stem=true for small images",
            file=sys.stderr,
        )


def check_view_sizes(backbone: nn.Module, cfg: Config, sizes: set[int]) -> None:
    """A timm backbone that takes one input size only (a ViT's fixed patch grid) and views of
    other sizes (``multi_crop``'s local views): one line here, where timm's assertion would stop
    the first step. Each other size is tried once, on one blank image (eval mode, no grad)."""
    other = sorted(sizes - {cfg.image_size})
    if not (other and is_timm(cfg.backbone)):
        return
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            for size in other:
                try:
                    backbone(torch.zeros(1, 3, size, size))
                except (AssertionError, RuntimeError) as e:
                    why = (str(e).splitlines() or [type(e).__name__])[0]
                    raise UserError(
                        f"backbone {cfg.backbone} takes {cfg.image_size} px inputs only ({why}) "
                        f"and multi_crop {cfg.multi_crop!r} has views of {size} px; drop "
                        "--multi-crop or choose a backbone that takes any size (a ResNet)"
                    ) from None
    finally:
        backbone.train(was_training)


def sync_batch_norm(model: nn.Module, sync_bn: bool, device: torch.device) -> nn.Module:
    """``model`` with synchronised batch norm when ``sync_bn`` in a distributed run; refused on
    the CPU (torch's SyncBatchNorm runs on GPUs only)."""
    if not (sync_bn and dist.is_dist()):
        return model
    if device.type == "cpu":
        raise UserError(
            "sync_bn needs GPUs (torch's SyncBatchNorm does not run on the CPU) and this run "
            "trains on the CPU; remove sync_bn=true or train on CUDA"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def step_hooks(needs: Needs, ctx: HookContext, run_backward: Sequence[Action] = ()) -> StepHooks:
    """The step's actions: first the run's (in a distributed run, the trainable loss parts'
    gradients averaged over ranks, as DDP averages the model's, so every rank applies the same
    update; then ``run_backward``, e.g. gradient clipping), then the method's
    (``needs.after_backward`` / ``after_optimizer_step``) bound to ``ctx``. The loss parts start
    equal on every rank (rank 0's values). Each is a :class:`Bound`: a deep copy of the parts
    holds actions on the copied modules."""
    hooks = StepHooks()
    loss_parts = [p for p in ctx.objective.parameters() if p.requires_grad]
    if dist.is_dist() and loss_parts:
        dist.broadcast_from_main(loss_parts)
        hooks.backward.append(Bound(_average, loss_parts))
    hooks.backward += list(run_backward)
    hooks.backward += [Bound(bind, ctx) for bind in needs.after_backward]
    hooks.optimizer_step += [Bound(bind, ctx) for bind in needs.after_optimizer_step]
    return hooks


def _average(params: list[torch.Tensor]) -> Action:
    return lambda clock: dist.average_gradients(params)


def build_parts(
    cfg: Config,
    device: torch.device,
    data: TrainData,
    total_steps: int,
    backbone: nn.Module | None = None,
    feat_dim: int | None = None,
) -> RunParts:
    """The run's parts on ``device`` for training on ``data`` (its ``steps_per_epoch``);
    ``backbone``: the user's own module, else cfg's."""
    steps_per_epoch = data.steps_per_epoch
    spec = record_method(cfg)[0]
    model = model_from_config(cfg, backbone=backbone, feat_dim=feat_dim)
    sizes = {v.size for v in data.spec.views()}
    if backbone is None:
        note_small_views(cfg, min(sizes))
        check_view_sizes(model.encoder.backbone, cfg, sizes)
    model = sync_batch_norm(model, cfg.sync_bn, device).to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
        guard_cpu_convs(model, device)  # a CPU segfault of one conv shape (issue 45 item 3)
    target = TargetBranch(
        cfg.target or spec.target, model.encoder, cfg.snapshot_every or steps_per_epoch
    )
    objective = Objective.from_config(cfg).to(device)
    net: nn.Module = model
    if dist.is_dist():
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    peak_lr = cfg.base_lr * cfg.batch_size / 256
    fixed = cfg.predictor_fixed_lr
    if fixed is None:
        fixed = bool(spec.train_defaults.get("predictor_fixed_lr", False))
    optimizer = build_optimizer(
        model,
        cfg.optimizer,
        peak_lr,
        cfg.weight_decay,
        cfg.sgd_momentum,
        bias_lr_scale=(cfg.base_lr_bias or cfg.base_lr) / cfg.base_lr,
        predictor_fixed_lr=fixed,
        predictor_lr_scale=cfg.predictor_lr_scale,
        predictor_prefix=tuple(f"{name}." for name in spec.needs.online_heads),
        objective=objective,
        norm_bias_decay=cfg.norm_bias_decay,
    )
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)  # resolved by the config
    lr = lr_schedule(peak_lr, total_steps, warmup_steps, cfg.min_lr_ratio).tolist()
    base_m = cfg.momentum_base
    if base_m is None:
        base_m = float(spec.train_defaults.get("momentum_base", 0.996))
    momentum = cosine_momentum(base_m, cfg.momentum_final, total_steps).tolist()
    world = dist.world_size()
    amp = resolve_amp(cfg, model, device, max(2, min(8, cfg.batch_size // world)))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    parts = RunParts(model, net, target, objective, optimizer, scaler, lr, momentum, peak_lr, amp)
    parts.wd = wd_schedule(cfg.weight_decay, cfg.weight_decay_end, total_steps)
    parts.clock = Clock(0, steps_per_epoch, total_steps)
    clip = [Bound(clip_grad_norm, optimizer, cfg.clip_grad)] if cfg.clip_grad > 0 else []
    ctx = HookContext(model, target, objective, objective.hp)
    parts.hooks = step_hooks(spec.needs, ctx, run_backward=clip)
    return parts
