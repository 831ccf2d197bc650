"""Optional per-section timing of a training step (used by ``bench/step_breakdown.py``).

The trainer wraps each part of its step in ``self.timer(name)``; the default timer does
nothing, so the training loop pays nothing for it.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

import torch


class NullTimer:
    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        yield


def section(timer: NullTimer | None, name: str) -> contextlib.AbstractContextManager[None]:
    """``timer(name)``, or a context that does nothing for ``timer=None`` (the regions of the
    compiled step are traced with ``None``: a graph holds no timer)."""
    return contextlib.nullcontext() if timer is None else timer(name)


class SectionTimer(NullTimer):
    """Accumulates wall time per section; synchronises CUDA around each section."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.totals: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.totals[name] += time.perf_counter() - start

    def reset(self) -> None:
        self.totals.clear()
