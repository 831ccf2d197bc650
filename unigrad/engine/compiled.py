"""``compile: step``: the whole training step under ``torch.compile``.

The step is the eager step (:class:`unigrad.engine.step.Step`) with its two regions compiled
and a backward between them, so nothing of it is written twice:

1. :func:`~unigrad.engine.step.forward_objective`: the online network on every view, the
   target branch, the objective with its sample-set updates (F, the bank's staged keys) -> the
   loss and its statistics. AOTAutograd compiles its backward too, so ``loss.backward()`` runs
   a compiled graph.
2. :func:`~unigrad.engine.step.update`: the optimiser step, the actions after it
   (``RunParts.hooks``; they see a clock whose step is a 0-d tensor) and the target's EMA.

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
from typing import Any

import torch

from unigrad.core import dist
from unigrad.core.clock import Clock
from unigrad.engine.device import network_key, read_cached, write_cached
from unigrad.engine.optim import schedule_tensors, set_lr
from unigrad.engine.parts import RunParts
from unigrad.engine.run_config import compile_backend
from unigrad.engine.step import Step, forward_objective, train_step, update

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


class CompiledStep(Step):
    """The training step of ``parts`` with its two regions compiled (see the module docstring):
    :class:`~unigrad.engine.step.Step` running ``torch.compile`` of
    :func:`~unigrad.engine.step.forward_objective` and :func:`~unigrad.engine.step.update`.

    Called as :data:`unigrad.engine.step.train_step` is, with the parts it was built for;
    returns the same statistics (device tensors). ``backend``/``mode``: ``torch.compile``'s
    (default: inductor, with CUDA graphs on CUDA); tests pass ``backend="aot_eager"`` to check
    the capture quickly.
    """

    timed_inside = False

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
        opts: dict[str, Any] = {"backend": backend}
        if mode is not None:
            opts["mode"] = mode
        self.forward = torch.compile(forward_objective, **opts)
        self.update = torch.compile(update, **opts)

    def schedules(self, parts: RunParts, index: int) -> tuple[Clock, torch.Tensor | None]:
        """Fills the 0-d tensors of the learning rates (and a scheduled weight decay), ``1 - m``
        and the step index (kernel arguments, not host reads: one graph serves every step)."""
        assert parts is self.parts, "a CompiledStep serves the parts it was built for"
        if not self._lr_tensors:
            schedule_tensors(parts.optimizer, self.device, wd=parts.wd is not None)
            self._lr_tensors = True
        wd = parts.wd[index] if parts.wd is not None else None
        set_lr(parts.optimizer, parts.lr[index], parts.peak_lr, wd)
        self.ema_weight.fill_(1.0 - parts.momentum[index])
        self.step_index.fill_(index)
        return parts.clock.at(self.step_index), self.ema_weight if parts.target.has_ema else None

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        """A copy: under CUDA graphs the next replay overwrites the regions' outputs, and the
        statistics outlive the step (the metrics window keeps them to the log boundary)."""
        return t.clone()

    def begin(self) -> None:
        if self.cuda_graphs:  # a new iteration of the CUDA graphs' memory pool
            torch.compiler.cudagraph_mark_step_begin()


def _note(line: str) -> None:
    if dist.is_main():
        print(line, file=sys.stderr)


def choose_step(cfg: Any, parts: RunParts, device: torch.device) -> tuple[str, StepFn]:
    """The step function ``cfg.compile`` asks for, and the mode it runs in (``off``,
    ``model``, ``step``, or ``auto`` while undecided; the caller records it in
    ``cfg.compile_resolved``). ``model``: the online network compiled in place (``parts.net``);
    ``step``: :class:`CompiledStep`, or ``model`` with one line saying why when the step cannot
    be captured; ``auto``: ``step`` on CUDA, on a CPU the faster of eager and ``step`` as
    measured at the first step (:class:`AutoStep`, cached)."""
    mode = cfg.compile
    if mode in ("step", "auto"):
        reason = step_fallback_reason(parts, device)
        if reason is not None:
            _note(f"compile={mode}: {reason}; compiling the online network only (compile=model)")
            mode = "model"
    if mode == "model":
        parts.net = torch.compile(parts.net)
    if mode == "step" or (mode == "auto" and device.type == "cuda"):
        return "step", CompiledStep(parts, device)
    if mode == "auto" and dist.is_dist():  # the measurement's copies cannot hold DDP's hooks
        _note("compile=auto: not measured in a distributed CPU run; eager (compile=off)")
        mode = "off"
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
    """``compile: auto`` on a CPU, undecided: :meth:`decide`, called by the trainer at the first
    step, times the eager step against :class:`CompiledStep` on copies of the run's parts and
    its first views (the compilation itself not counted) and returns the verdict with the step
    to run from then on; the caller records the verdict (``cfg.compile_resolved``,
    config.yaml). The verdict is cached per host, torch and network
    (:func:`unigrad.engine.device.network_key`). The run's own parts are not touched by the
    measurement. Single-process runs only (:func:`choose_step` runs a distributed CPU run
    eagerly)."""

    def __init__(self, cfg: Any, parts: RunParts, device: torch.device, iters: int = 5) -> None:
        self.cfg, self.parts, self.device, self.iters = cfg, parts, device, iters

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

    def decide(self, views: list[torch.Tensor], index: int, **kw: Any) -> tuple[str, StepFn]:
        """The verdict (``off`` or ``step``) for this run's first ``views`` at step ``index``,
        and the step function that runs it. ``kw``: the step's keyword arguments."""
        batch = views[0].shape[0]
        key = "compile | " + network_key(self.cfg, self.parts.model, self.device, batch)
        verdict = read_cached(key)
        cached = isinstance(verdict, dict) and verdict.get("choice") in ("off", "step")
        if not cached:
            verdict = self._measure(views, index, **kw)
        if dist.is_main() and not cached:
            write_cached(key, verdict)
        _note(
            f"compile auto: {verdict['choice']} (eager {verdict['eager_ms']:g} ms, "
            f"step {verdict['step_ms']:g} ms per step; {'cached' if cached else 'measured'})"
        )
        if verdict["choice"] == "step":
            return "step", CompiledStep(self.parts, self.device)
        return "off", train_step
