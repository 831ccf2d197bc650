"""Device and precision choice, shared by training and evaluation."""

from __future__ import annotations

import copy
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unigrad.errors import UserError


def select_device(name: str = "auto") -> torch.device:
    """``auto``: the current CUDA device when available, else the CPU."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("device cuda, but no CUDA device is available; use device cpu")
        return torch.device("cuda", torch.cuda.current_device())
    if name not in ("auto", "cpu"):
        raise UserError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls/convolutions run natively (and faster than fp32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_auto_dtype(device: torch.device) -> torch.dtype:
    """``amp: auto`` on a CUDA device: bf16 where the GPU computes in it natively (compute
    capability 8.0 and newer: Ampere, Hopper), else fp16 with its loss scaler. bf16 needs no
    scaler, whose overflow check reads the host each step and so keeps ``compile: step`` from
    capturing the step."""
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype without a measurement: ``auto`` is :func:`cuda_auto_dtype` on CUDA, bf16
    on CPUs with native bf16, else off. Training uses :func:`resolve_amp`, which measures."""
    if amp == "auto":
        if device.type == "cuda":
            return cuda_auto_dtype(device)
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


#: Fewer input channels than this make a channels_last 1x1 strided convolution crash on the CPU.
CRASHING_CONV_CHANNELS = 16


def crashes_on_cpu(conv: torch.nn.Module) -> bool:
    """Whether ``conv`` has the shape whose channels_last fp32 backward ends the process with a
    segmentation fault on the CPU (torch 2.14.1, oneDNN; 1x1 kernel, stride 2, 8 input channels
    or fewer, inputs of 56 px or more: ``bench/cpu_conv_1x1_segfault.py``; the bound is kept
    loose, at < 16 channels). ResNet-18 at width 0.125 has one: its first downsampling."""
    return (
        isinstance(conv, torch.nn.Conv2d)
        and tuple(conv.kernel_size) == (1, 1)
        and max(conv.stride) > 1
        and conv.in_channels < CRASHING_CONV_CHANNELS
    )


def _contiguous_input(conv: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].contiguous(), *args[1:])


def guard_cpu_convs(model: torch.nn.Module, device: torch.device) -> int:
    """On the CPU, run every convolution of ``model`` that :func:`crashes_on_cpu` in the
    contiguous layout (its weight and, by a forward pre-hook, its input [B, C, H, W]); the rest
    of a channels_last model keeps its layout, the numbers are the same. Returns how many."""
    if device.type != "cpu":
        return 0
    convs = [m for m in model.modules() if crashes_on_cpu(m)]
    for conv in convs:
        w = conv.weight  # a 1x1 kernel counts as contiguous in either layout: force the strides
        w.data = w.data.clone(memory_format=torch.contiguous_format)
        conv.register_forward_pre_hook(_contiguous_input)
    return len(convs)


#: bf16 is chosen over fp32 only when its step is at least this much faster.
BF16_MARGIN = 1.05
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_cache_path() -> Path:
    """``<unigrad cache>/amp.json``: amp auto's CPU verdicts, per machine and network."""
    from unigrad.data.inmemory import default_cache_dir

    return default_cache_dir() / "amp.json"


def _pass_s(model: torch.nn.Module, views: list[torch.Tensor], dtype: torch.dtype | None) -> float:
    """Seconds of one forward/backward pass of ``model`` on ``views`` under ``dtype`` autocast."""
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        z, p = model(views)
        loss = sum(x.float().square().mean() for x in [*z, *(p or [])])
    loss.backward()  # type: ignore[union-attr]
    return time.perf_counter() - t0


def measure_cpu_amp(
    model: torch.nn.Module, image_size: int, batch: int, channels_last: bool, iters: int = 3
) -> dict[str, Any]:
    """Time forward/backward passes of ``model`` (2 views of ``batch`` random images) in fp32
    and under bf16 autocast; the model's weights, buffers and gradients are left as they were.

    Returns {"choice": "fp32" | "bf16", "fp32_ms": ..., "bf16_ms": ... or None}.
    """
    state = copy.deepcopy(model.state_dict())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            views = [
                torch.randn(batch, 3, image_size, image_size).contiguous(memory_format=fmt)
                for _ in range(2)
            ]
            # Round 0 warms both precisions up; then fp32 and bf16 passes alternate, so that a
            # burst of load on the host cannot fall on one precision only. min = least disturbed.
            fp32_t: list[float] = []
            bf16_t: list[float] | None = []
            for r in range(1 + iters):
                fp32_t.append(_pass_s(model, views, None))
                if bf16_t is None:
                    continue
                try:
                    bf16_t.append(_pass_s(model, views, torch.bfloat16))
                except RuntimeError:  # no bf16 autocast on this CPU
                    bf16_t = None
                    continue
                if r == 0 and bf16_t[0] > 3 * fp32_t[0]:  # emulated bf16: no need to time more
                    break
            fp32_s = min(fp32_t[1:] or fp32_t)
            bf16_s = min(bf16_t[1:] or bf16_t) if bf16_t else None
    finally:
        model.load_state_dict(state)
        model.zero_grad(set_to_none=True)
    faster = bf16_s is not None and bf16_s * BF16_MARGIN < fp32_s
    return {
        "choice": "bf16" if faster else "fp32",
        "fp32_ms": round(fp32_s * 1e3, 3),
        "bf16_ms": None if bf16_s is None else round(bf16_s * 1e3, 3),
    }


def ieee_fp32_on_cuda() -> None:
    """Make CUDA convolutions and matmuls use IEEE fp32, so that a run recorded as fp32 is
    one: PyTorch lets cuDNN use TF32 (10-bit mantissa) by default on Ampere and newer."""
    for backend in (torch.backends.cudnn, torch.backends.cuda.matmul):
        conv = getattr(backend, "conv", backend)  # cudnn.conv in torch >= 2.9
        if hasattr(conv, "fp32_precision"):
            conv.fp32_precision = "ieee"
        else:
            backend.allow_tf32 = False


def resolve_amp(cfg: Any, model: torch.nn.Module, device: torch.device, batch: int) -> Any:
    """The autocast dtype for training; sets ``cfg.amp_resolved`` (and, when measured,
    ``cfg.amp_measured``) so config.yaml records it.

    Explicit ``amp`` values are used as given (``off`` on CUDA also turns TF32 off:
    :func:`ieee_fp32_on_cuda`); ``auto`` on CUDA is bf16 where the GPU supports it, else
    fp16 (:func:`cuda_auto_dtype`). On the CPU ``auto`` keeps a
    resumed run's ``amp_resolved``, else times fp32 against bf16 on ``model``
    (:func:`measure_cpu_amp`, once per CPU model, torch version and network: cached in
    :func:`amp_cache_path`) and takes bf16 only when clearly faster. In a distributed run
    rank 0's verdict holds for every rank.
    """
    from unigrad.core import dist

    if cfg.amp != "auto":
        cfg.amp_resolved = precision_name(amp_dtype(cfg.amp, device))
        if device.type == "cuda" and cfg.amp_resolved == "fp32":
            ieee_fp32_on_cuda()
        return amp_dtype(cfg.amp, device)
    if device.type == "cuda":
        dtype = cuda_auto_dtype(device)
        cfg.amp_resolved = precision_name(dtype)
        return dtype
    if cfg.amp_resolved in DTYPES:  # resumed run: keep its precision
        return DTYPES[cfg.amp_resolved]
    key = network_key(cfg, model, device, batch)
    path = amp_cache_path()
    verdict = read_cached(key)
    cached = isinstance(verdict, dict) and verdict.get("choice") in ("fp32", "bf16")
    if not cached:
        verdict = measure_cpu_amp(model, cfg.image_size, batch, cfg.channels_last)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        flag = torch.tensor([1.0 if verdict["choice"] == "bf16" else 0.0])
        torch.distributed.broadcast(flag, 0)
        verdict = {**verdict, "choice": "bf16" if flag.item() else "fp32"}
    bf = verdict["bf16_ms"]
    timing = f"fp32 {verdict['fp32_ms']:g} ms, bf16 " + (
        f"{bf:g} ms" if bf is not None else "unsupported"
    )
    if dist.is_main():
        if not cached:
            write_cached(key, verdict)
        print(
            f"amp auto: {verdict['choice']} on this CPU (forward/backward of {batch} images: "
            f"{timing}; {'cached in' if cached else 'measured, cached in'} {path})",
            file=sys.stderr,
        )
    cfg.amp_resolved = verdict["choice"]
    cfg.amp_measured = f"{timing} per forward/backward of {batch} images"
    return DTYPES[verdict["choice"]]


def network_key(cfg: Any, model: torch.nn.Module, device: torch.device, batch: int) -> str:
    """What a cached speed measurement depends on: host, torch, batch and the network."""
    net = ("backbone", "width", "cifar_stem", "norm", "image_size", "channels_last")
    net += ("proj_depth", "proj_dim", "proj_hidden", "pred_hidden", "method")
    key = f"{host_label(device)} | torch {torch.__version__} | batch {batch} | " + ", ".join(
        f"{k}={getattr(cfg, k, None)}" for k in net
    )
    if cfg.backbone == "custom":  # one's own module: its class and size tell networks apart
        n = sum(p.numel() for p in model.parameters())
        key += f" | {type(model.encoder.backbone).__qualname__} with {n} parameters"
    return key


def _cache() -> dict[str, Any]:
    """The measurements' cache (:func:`amp_cache_path`); {} when missing or unreadable."""
    try:
        cache = json.loads(amp_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def read_cached(key: str) -> Any:
    """A cached measurement's verdict, None when there is none."""
    return _cache().get(key)


def write_cached(key: str, verdict: Any) -> None:
    """Add a verdict to the cache (atomically; a read-only cache only costs a new measurement
    next time)."""
    path = amp_cache_path()
    cache = _cache()
    cache[key] = verdict
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass


def precision_name(dtype: torch.dtype | None) -> str:
    """The training precision as results record it: fp32, bf16 or fp16."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def host_label(device: torch.device) -> str:
    """What a measurement ran on: the GPU's name, or the CPU's model and vector ISA."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    isa = torch.backends.cpu.get_cpu_capability()
    return f"{model} ({isa}{', native bf16' if cpu_has_native_bf16() else ''})"


def seed_everything(seed: int) -> None:
    """Seed torch's, Python's and NumPy's global generators (a run's start)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
