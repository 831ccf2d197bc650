"""``compile: step``: the whole training step under ``torch.compile``.

The step is two compiled regions and a backward between them:

1. ``forward``: the online network on every view, the target branch, the objective with its
   sample-set updates (F, the bank's staged keys) -> the loss and its statistics. AOTAutograd
   compiles its backward too, so ``loss.backward()`` runs a compiled graph.
2. ``update``: the optimiser step, the actions after it (``parts.hooks``) and the target's EMA.

Between them, eagerly, the actions after backward (``parts.hooks``; they see the clock with its
tensor step, as the regions do).

What stays eager is what a graph cannot hold or does not need: CutMix's draws (its boxes
are drawn before region 1 and enter as tensors), ``zero_grad``, the float16 loss scaler (its
overflow check reads the host), the snapshot target's copy every k steps, and the bank's enqueue
(:meth:`~unigrad.core.objective.Objective.after_step`, one ``index_copy_``). The schedules enter
as 0-d tensors filled before each step (a kernel argument, not a host read), so one graph serves
every step: the learning rate (and a scheduled weight decay) of each parameter group, the EMA
weight ``1 - m`` and the step index the objective's terms see (no int enters a graph: CUDA
graphs record one graph per distinct int input).

On CUDA the regions run as CUDA graphs (``mode="reduce-overhead"``): each step begins a new
generation of their memory pool, and the statistics are copied out of it (a replay overwrites
its outputs, and the metrics keep them until the log boundary); on the CPU inductor generates
C++. A configuration the regions cannot hold falls back to ``compile: model`` with one
line saying why (:func:`step_fallback_reason`).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from unigrad.config import save_config
from unigrad.core import dist
from unigrad.core.objective import Mix
from unigrad.engine.device import network_key, read_cached, write_cached
from unigrad.engine.optim import schedule_tensors, set_lr
from unigrad.engine.parts import RunParts
from unigrad.engine.profiling import NullTimer
from unigrad.engine.run_config import compile_backend
from unigrad.engine.step import mixed_views, train_step

StepFn = Callable[..., dict[str, torch.Tensor]]


def step_fallback_reason(parts: RunParts, device: torch.device) -> str | None:
    """Why ``compile: step`` cannot capture this run's step (None: it can)."""
    if parts.scaler.is_enabled():
        return "float16's loss scaler checks for overflow on the host each step (use amp bf16)"
    if device.type not in ("cpu", "cuda"):
        return f"torch.compile has no step backend for {device.type}"
    if parts.wd is not None and type(parts.optimizer).__name__ == "Lars":
        return (
            "timm's LARS branches on the weight decay, which a schedule makes a tensor "
            "(a graph break and a host read per parameter); drop weight_decay_end or use sgd/adamw"
        )
    if device.type == "cuda" and parts.objective.term.cuda_graph_blocker:
        return parts.objective.term.cuda_graph_blocker
    return None


class CompiledStep:
    """The training step of ``parts`` with its two regions compiled (see the module docstring).

    Called as :func:`unigrad.engine.step.train_step` is (``step(parts, views, gen, index,
    n_target=..., cutmix=...)``, with the parts it was built for); returns the same statistics
    (device tensors). ``backend``/``mode``: ``torch.compile``'s (default: inductor, with CUDA
    graphs on CUDA); tests pass ``backend="aot_eager"`` to check the capture quickly.
    """

    def __init__(
        self,
        parts: RunParts,
        device: torch.device,
        *,
        backend: str | None = None,
        mode: str | None = None,
    ) -> None:
        self.parts = parts
        backend = backend or compile_backend()
        if mode is None and backend == "inductor" and device.type == "cuda":
            mode = "reduce-overhead"
        self.cuda_graphs = mode == "reduce-overhead"
        self.device = device
        self._lr_tensors = False  # made at the first call, after a resume loaded the groups
        self.ema_weight = torch.zeros((), dtype=torch.float32, device=device)
        # the step index enters as a tensor: an int input would be specialised, or (as a SymInt)
        # key a new CUDA graph recording for every value under reduce-overhead
        self.step_index = torch.zeros((), dtype=torch.int64, device=device)
        self.ema = parts.target.net is not None and parts.target.kind != "snapshot"
        opts: dict[str, Any] = {"backend": backend}
        if mode is not None:
            opts["mode"] = mode
        self._forward = torch.compile(self._forward_eager, **opts)
        self._update = torch.compile(self._update_eager, **opts)

    # ---------------------------------------------------------------- the regions (traced)
    def _forward_eager(
        self,
        online_views: list[torch.Tensor],
        views: list[torch.Tensor],
        mix: Mix | None,
        step: torch.Tensor,
        n_target: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.parts
        with torch.autocast(views[0].device.type, dtype=p.amp or torch.float32,
                            enabled=p.amp is not None):  # fmt: skip
            z, pred = p.net(online_views)
            targets = p.target(views[:n_target], z[:n_target])
            loss = p.objective(z, targets=targets, pred=pred, mix=mix, step=p.clock.at(step))
        return loss, dict(p.objective.stats)

    def _update_eager(self, step: torch.Tensor) -> None:
        p = self.parts
        p.optimizer.step()
        p.hooks.after_optimizer_step(p.clock.at(step))
        if self.ema:
            p.target.ema_(p.model.encoder, self.ema_weight)

    # ---------------------------------------------------------------- one step
    def __call__(
        self,
        parts: RunParts,
        views: list[torch.Tensor],
        gen: torch.Generator,
        step: int,
        *,
        n_target: int,
        cutmix: bool = False,
        timer: NullTimer | None = None,
    ) -> dict[str, torch.Tensor]:
        assert parts is self.parts, "a CompiledStep serves the parts it was built for"
        p = self.parts
        timer = timer or NullTimer()
        if not self._lr_tensors:  # the schedules as 0-d tensors: one graph for every step
            schedule_tensors(p.optimizer, self.device, wd=p.wd is not None)
            self._lr_tensors = True
        wd = p.wd[step] if p.wd is not None else None
        set_lr(p.optimizer, p.lr[step], p.peak_lr, wd)  # fills the 0-d tensors
        self.ema_weight.fill_(1.0 - p.momentum[step])
        self.step_index.fill_(step)
        online_views, mix = mixed_views(views, gen, cutmix, timer)
        p.mix = mix
        if self.cuda_graphs:  # a new iteration of the CUDA graphs' memory pool
            torch.compiler.cudagraph_mark_step_begin()
        with timer("forward (compiled)"):
            loss, stats = self._forward(online_views, views, mix, self.step_index, n_target)
        # the statistics outlive the step (the metrics window keeps them to the log boundary);
        # under CUDA graphs the next replay overwrites its outputs, so they are copied out
        stats = {k: v.clone() for k, v in stats.items()}
        p.objective.stats = dict(stats)
        with timer("backward (compiled)"):
            p.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            p.hooks.after_backward(p.clock.at(self.step_index))
        with timer("optimizer + EMA (compiled)"):
            self._update(self.step_index)
            if p.target.kind == "snapshot":
                p.target.update(p.model.encoder, p.momentum[step], step + 1)
        with timer("loss + sample set"):
            p.objective.after_step()
        stats["loss"] = loss.detach().clone()
        p.mark_nonfinite(stats["loss"])
        return stats


def _note(line: str) -> None:
    if dist.is_main():
        print(line, file=sys.stderr)


def choose_step(cfg: Any, parts: RunParts, device: torch.device) -> tuple[str, StepFn]:
    """The step function ``cfg.compile`` asks for, and the mode it runs in (``off``,
    ``model`` or ``step``; ``cfg.compile_resolved`` records it). ``model``: the online network
    compiled in place (``parts.net``); ``step``: :class:`CompiledStep`, or ``model`` with one
    line saying why when the step cannot be captured; ``auto``: ``step`` on CUDA, on a CPU the
    faster of eager and ``step`` as measured at the first step (:class:`AutoStep`, cached)."""
    mode = cfg.compile
    if mode in ("step", "auto"):
        reason = step_fallback_reason(parts, device)
        if reason is not None:
            _note(f"compile={mode}: {reason}; compiling the online network only (compile=model)")
            mode = "model"
    if mode == "model":
        parts.net = torch.compile(parts.net)
    cfg.compile_resolved = mode if mode != "auto" else cfg.compile_resolved
    if mode == "step" or (mode == "auto" and device.type == "cuda"):
        cfg.compile_resolved = "step"
        return "step", CompiledStep(parts, device)
    if mode == "auto" and dist.is_dist():  # the measurement's copies cannot hold DDP's hooks
        _note("compile=auto: not measured in a distributed CPU run; eager (compile=off)")
        cfg.compile_resolved, mode = "off", "off"
    if mode == "auto":
        return "auto", AutoStep(cfg, parts, device)
    return mode, train_step


def _time_steps(
    fn: StepFn, parts: RunParts, views: list[torch.Tensor], index: int, n: int, **kw: Any
) -> float:
    """Seconds per step of ``fn`` on ``parts`` repeating step ``index`` (2 warm-up steps, then
    the median of ``n``)."""
    times = []
    for i in range(2 + n):
        t0 = time.perf_counter()
        stats = fn(parts, views, torch.Generator().manual_seed(i), index, **kw)
        stats["loss"].sum().tolist()  # wait for the step (a measurement, not the training loop)
        times.append(time.perf_counter() - t0)
    return sorted(times[2:])[n // 2]


class AutoStep:
    """``compile: auto`` on a CPU: at the first step, on copies of the run's parts and its
    first views, times the eager step against :class:`CompiledStep` (the compilation itself not
    counted) and runs the faster one from then on; the verdict is cached per host, torch and
    network (:func:`unigrad.engine.device.network_key`), and ``cfg.compile_resolved`` records it
    (config.yaml of a fresh run is written again with it).
    The run's own parts are not touched by the measurement. Single-process runs only
    (:func:`choose_step` runs a distributed CPU run eagerly)."""

    def __init__(self, cfg: Any, parts: RunParts, device: torch.device, iters: int = 5) -> None:
        self.cfg, self.parts, self.device, self.iters = cfg, parts, device, iters
        self.step_fn: StepFn | None = None

    def _measure(self, views: list[torch.Tensor], index: int, **kw: Any) -> dict[str, Any]:
        with torch.random.fork_rng(devices=[]):
            copied = copy.deepcopy(self.parts)
            eager_s = _time_steps(train_step, copied, views, index, self.iters, **kw)
            trial = copy.deepcopy(self.parts)
            compiled = CompiledStep(trial, self.device)
            step_s = _time_steps(compiled, trial, views, index, self.iters, **kw)
        choice = "step" if step_s < eager_s else "off"
        return {"choice": choice, "eager_ms": round(eager_s * 1e3, 2),
                "step_ms": round(step_s * 1e3, 2)}  # fmt: skip

    def __call__(self, parts: RunParts, views: list[torch.Tensor], gen: torch.Generator,
                 step: int, **kw: Any) -> dict[str, torch.Tensor]:  # fmt: skip
        if self.step_fn is None:
            batch = views[0].shape[0]
            key = "compile | " + network_key(self.cfg, self.parts.model, self.device, batch)
            verdict = read_cached(key)
            cached = isinstance(verdict, dict) and verdict.get("choice") in ("off", "step")
            if not cached:
                verdict = self._measure(views, step, **kw)
            if dist.is_main() and not cached:
                write_cached(key, verdict)
            _note(
                f"compile auto: {verdict['choice']} (eager {verdict['eager_ms']:g} ms, "
                f"step {verdict['step_ms']:g} ms per step; {'cached' if cached else 'measured'})"
            )
            self.cfg.compile_resolved = verdict["choice"]
            record = Path(self.cfg.out) / "config.yaml"  # written before this first step
            if step == 0 and dist.is_main() and record.is_file():
                save_config(self.cfg, record)
            step_fn = train_step
            if verdict["choice"] == "step":
                step_fn = CompiledStep(self.parts, self.device)
            self.step_fn = step_fn
        return self.step_fn(parts, views, gen, step, **kw)
