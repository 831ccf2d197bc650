"""The fast pipeline's two ways to apply its random draws (issue 34, item 4), augmentation
alone: img/s of a batch's views from in-memory uint8 images, host draws (a CPU generator, each
op on its selected rows) vs device draws (a generator on the device, each op on every row and
kept by mask: no host sync, no transfer), eager and compiled with inductor (what ``compile:
step`` uses on a GPU), with the compiled views' largest difference from the eager ones.

    .venv/bin/python bench/augment_draws.py [--device cpu|cuda] [--batch 256] [--steps 30]

BYOL's recipe (blur 1.0 / 0.1, solarize 0 / 0.2), two 32 px views of 32 px images; on a GPU
the images sit on it, as the fast pipeline keeps them. Prints a markdown table and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch
from harness import machine

from unigrad.data.augment import AugmentSpec, FastAugment


def rate(aug: FastAugment, x: torch.Tensor, device: str, steps: int) -> float:
    gen = (lambda s: torch.Generator(device=device).manual_seed(s)) if aug.device_draws else (
        lambda s: torch.Generator().manual_seed(s))  # fmt: skip
    for s in range(3):
        aug(x, gen(s))
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(steps):
        aug(x, gen(s))
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * x.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args()
    spec = AugmentSpec(image_size=32, blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2])
    x = torch.randint(0, 256, (a.batch, 3, 32, 32), dtype=torch.uint8, device=a.device)
    host = rate(FastAugment(spec), x, a.device, a.steps)
    eager = FastAugment(spec, device_draws=True)
    dev = rate(eager, x, a.device, a.steps)
    comp = FastAugment(spec, device_draws=True, compile_backend="inductor")
    t0 = time.perf_counter()
    gen = torch.Generator(device=a.device)
    diff = max(float((u - v).abs().max()) for u, v in zip(
        comp(x, gen.manual_seed(0)), eager(x, gen.manual_seed(0)), strict=True))  # fmt: skip
    compile_s = time.perf_counter() - t0
    fused = rate(comp, x, a.device, a.steps)
    print(f"# {machine()}\n")
    print(
        f"| {a.device}, batch {a.batch}, img/s | host draws | device draws | device draws, "
        "compiled | compiled / host | max diff compiled vs eager | compile s |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| 2 views | {host:,.0f} | {dev:,.0f} | {fused:,.0f} | {fused / host:.2f} "
        f"| {diff:.1e} | {compile_s:.0f} |"
    )


if __name__ == "__main__":
    main()
