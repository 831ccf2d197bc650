"""Run outputs: ``metrics.csv`` (long format: step, epoch, name, value), TensorBoard, and any
further sink (an object with ``log(step, epoch, metrics)`` and ``close()``, e.g. Weights &
Biases: :mod:`unigrad.engine.callbacks.wandb_log`) added with :meth:`RunLog.add_sink`.

Only rank 0 writes. On resume, rows logged after the checkpoint's step (work that is being
redone) are dropped, so the CSV never holds a step twice.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import Any

from unigrad.core import dist
from unigrad.engine.files import writing

HEADER = ["step", "epoch", "name", "value"]


class RunLog:
    def __init__(self, out: Path, tensorboard: bool = True) -> None:
        self.path = out / "metrics.csv"
        self.enabled = dist.is_main()
        self._tb = None
        self.sinks: list[Any] = []
        self.latest: dict[str, float] = {}  # the last value logged of each metric
        if not self.enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.write_text(",".join(HEADER) + "\n")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is the optional extra unigrad[tb]
                print(
                    "tensorboard is not installed: metrics go to metrics.csv only "
                    "(pip install 'unigrad[tb]', or --set tensorboard=false to silence this)",
                    file=sys.stderr,
                )
                return
            self._tb = SummaryWriter(str(out / "tb"))

    def truncate_after(self, step: int) -> None:
        """Drop rows with step > ``step`` (they are recomputed after a resume)."""
        if not self.enabled or not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, HEADER)
            w.writeheader()
            w.writerows(rows)
        tmp.replace(self.path)

    def add_sink(self, sink: Any) -> None:
        """Also send every later :meth:`log` to ``sink.log(step, epoch, metrics)``; ``close``
        closes it."""
        self.sinks.append(sink)

    def log(self, step: int, epoch: float, metrics: dict[str, float]) -> None:
        if not self.enabled or not metrics:
            return
        self.latest.update(metrics)
        for sink in self.sinks:
            sink.log(step, epoch, metrics)
        fix = "free some space, then continue with --resume"
        with writing(self.path, fix), open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            for name, value in metrics.items():
                w.writerow([step, f"{epoch:.4f}", name, f"{value:.6g}"])
        if self._tb is not None:
            for name, value in metrics.items():
                if math.isfinite(value):
                    self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close()
