"""A PyTorch CPU crash the trainer met (ResNet-18 at width 0.125, i.e. 8 channels after the
stem, on views whose first stage is 56 px or more: 224 px views, or 56 px with the CIFAR stem):
the fp32 backward of a channels_last 1x1 stride-2 convolution with few input channels ends the
process with a segmentation fault (seen with torch 2.14.1 on an Intel Xeon with AMX).

    .venv/bin/python bench/cpu_conv_1x1_segfault.py            # the table (each case in a process)
    .venv/bin/python bench/cpu_conv_1x1_segfault.py --case 8 16 56 channels_last   # one case

Each case runs in its own process, so a crash is a row of the table (exit -11), not the end of
the script. ``guarded``: the same case through :func:`unigrad.engine.device.guard_cpu_convs`,
the trainer's way around it (that convolution in the contiguous layout).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import torch
from harness import machine

FORMATS = ("channels_last", "contiguous", "guarded")


def run_case(cin: int, cout: int, side: int, fmt: str) -> None:
    """One forward/backward of Conv2d(cin, cout, 1, stride=2) on [8, cin, side, side]."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(cin, cout, 1, stride=2, bias=False)
    layout = torch.contiguous_format if fmt == "contiguous" else torch.channels_last
    conv = conv.to(memory_format=layout)
    if fmt == "guarded":
        from unigrad.engine.device import guard_cpu_convs

        guard_cpu_convs(conv, torch.device("cpu"))
    x = torch.randn(8, cin, side, side).contiguous(memory_format=layout).requires_grad_()
    conv(x).sum().backward()


def exit_code(cin: int, cout: int, side: int, fmt: str) -> int:
    cmd = [sys.executable, __file__, "--case", str(cin), str(cout), str(side), fmt]
    return subprocess.run(cmd, capture_output=True, timeout=300).returncode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", nargs=4, metavar=("CIN", "COUT", "SIDE", "FORMAT"))
    a = ap.parse_args()
    if a.case:
        run_case(int(a.case[0]), int(a.case[1]), int(a.case[2]), a.case[3])
        return
    print(f"# {machine()}\n")
    print("exit code of one forward/backward (0: fine, -11: segmentation fault)\n")
    print("| in -> out channels | input side | " + " | ".join(FORMATS) + " |")
    print("|---|---|" + "---|" * len(FORMATS))
    cases = [(8, 16, s) for s in (28, 48, 55, 56, 112)]
    cases += [(c, o, 56) for c, o in ((4, 8), (6, 12), (8, 8), (8, 32), (12, 24), (16, 32))]
    for cin, cout, side in cases:
        codes = " | ".join(str(exit_code(cin, cout, side, f)) for f in FORMATS)
        print(f"| {cin} -> {cout} | {side} | {codes} |", flush=True)


if __name__ == "__main__":
    main()
