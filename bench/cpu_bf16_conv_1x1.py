"""A PyTorch CPU bug the trainer met (a ResNet with the ImageNet stem on 16 px views): in bf16
autocast, the weight gradient of a 3x3 stride-2 convolution (padding 1) on a 1 x 1 input is
non-finite at random (8 of its 9 taps see only padding: their gradient should be 0).

    .venv/bin/python bench/cpu_bf16_conv_1x1.py [--trials 50]

Counts the trials with a non-finite weight gradient per (stride, input side, memory format).
"""

from __future__ import annotations

import argparse

import torch
from harness import machine


def trials(stride: int, side: int, channels_last: bool, n: int) -> int:
    bad = 0
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for _ in range(n):
        conv = torch.nn.Conv2d(32, 64, 3, stride=stride, padding=1, bias=False)
        conv = conv.to(memory_format=fmt)
        x = torch.randn(16, 32, side, side).to(torch.bfloat16)
        x = x.contiguous(memory_format=fmt).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        y.backward(torch.randn_like(y))
        bad += not bool(torch.isfinite(conv.weight.grad).all())
    return bad


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=50)
    n = ap.parse_args().trials
    torch.manual_seed(0)
    print(f"# {machine()}\n")
    print("| stride | input | memory format | non-finite weight gradients |")
    print("|---|---|---|---|")
    for stride, side in ((2, 1), (2, 2), (1, 1)):
        for cl in (True, False):
            fmt = "channels_last" if cl else "contiguous"
            print(f"| {stride} | {side}x{side} | {fmt} | {trials(stride, side, cl, n)}/{n} |")


if __name__ == "__main__":
    main()
