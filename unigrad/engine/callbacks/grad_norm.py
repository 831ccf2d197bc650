"""The gradient norm: ``grad/norm``, the global L2 norm of the online network's gradients after
backward (before the optimiser step, after any clipping or cancelling a hook before it did),
averaged over ``every`` steps. A step hook of a callback: computed on the device inside the step
(compiled with it under ``compile: step``) and read into Python only at its log boundaries."""

from __future__ import annotations

import torch

from unigrad.core.clock import Clock
from unigrad.engine.callbacks.base import Callback, LoopState

METRIC = "grad/norm"


class GradNormLog(Callback):
    """Logs the mean of ``||grad||_2`` over all the online network's parameters every ``every``
    steps (and at the run's last step)."""

    def __init__(self, every: int = 10) -> None:
        self.every = every
        self.params: list[torch.nn.Parameter] = []
        self.latest: torch.Tensor | None = None  # the last step's norm (0-d, on the device)
        self.total: torch.Tensor | None = None
        self.count = 0

    def on_fit_start(self, state: LoopState) -> None:
        self.params = [p for p in state.parts.model.parameters() if p.requires_grad]
        self.latest, self.total, self.count = None, None, 0

    def after_backward(self, clock: Clock) -> None:
        """||g||_2 over every gradient: the norm of the per-tensor norms (tensor ops only)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            self.latest = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    def on_step(self, state: LoopState) -> None:
        if self.latest is not None:  # a new tensor: outlives a CUDA graph's replay
            norm = self.latest.float()
            self.total = norm.clone() if self.total is None else self.total + norm
            self.count += 1
            self.latest = None
        if self.count and (state.step % self.every == 0 or state.step == state.total_steps):
            assert self.total is not None
            state.log_metrics({METRIC: float(self.total) / self.count})  # the one host read
            self.total, self.count = None, 0
