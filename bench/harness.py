"""Shared by the bench scripts: a Trainer on CIFAR-10 and a steady-state step timer."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from unigrad.config import build_config, load_yaml
from unigrad.engine.trainer import Trainer

#: the CIFAR-10 ImageFolder the bench scripts train on: ``$UNIGRAD_BENCH_DATA``, else the
#: shared copy beside the repository (a GPU machine gets it carried: bench/pack_inputs.py)
DATA_ENV = "UNIGRAD_BENCH_DATA"
CIFAR = Path(
    os.environ.get(DATA_ENV) or Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} threads, {dev}, torch {torch.__version__}"


def make_trainer(**over: Any) -> Trainer:
    """cifar-quick preset + overrides, writing into a throw-away directory."""
    out = tempfile.mkdtemp(prefix="unigrad-bench-")
    base = {"data": str(CIFAR), "out": out, "tensorboard": False, "diag_every": 0}
    cfg = build_config(load_yaml("cifar-quick"), base, over)
    return Trainer(cfg, show_progress=False)


def steady_state(tr: Trainer, steps: int, warmup: int = 2) -> tuple[float, float]:
    """(img/s, data s/step) over ``steps`` steps after ``warmup``; data time included in img/s."""
    it = tr.data.epoch(0, 0)
    data_t = 0.0
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            if tr.device.type == "cuda":
                torch.cuda.synchronize()
            start, data_t = time.perf_counter(), 0.0
        t = time.perf_counter()
        views = next(it).views
        data_t += time.perf_counter() - t
        tr.train_step(views, tr.data.cutmix_generator(tr.step))
    if tr.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return steps * tr.cfg.batch_size / elapsed, data_t / steps
