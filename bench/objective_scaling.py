"""Cost of the loss + sample-set update alone, vs batch size and projector width.

For UniGrad (F: C x C), Barlow Twins (batch cross-correlation), SimCLR (2N x 2N logits) and MoCo
(N x K logits against a memory bank), forward + backward of the objective on random embeddings,
plus the memory held by each method's sample set. Prints a table; nothing is asserted.

    .venv/bin/python bench/objective_scaling.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from unigrad.core.objective import Objective
from unigrad.core.targets import TargetOut

METHODS = [("unigrad", "grad"), ("barlow_twins", "loss"), ("simclr", "loss"), ("moco", "loss")]


def time_objective(method: str, form: str, n: int, c: int, repeat: int) -> float:
    obj = Objective(method, form, dim=c, bank_size=65536 if method == "moco" else None)
    z = [torch.randn(n, c, requires_grad=True) for _ in range(2)]
    t = [torch.randn(n, c) for _ in range(2)]
    if obj.bank is not None:  # a full bank, as in steady state
        obj.bank.push(torch.nn.functional.normalize(torch.randn(obj.bank.size, c), dim=-1))
    tg = TargetOut(pos=t, neg=t)
    for _ in range(2):  # warm-up
        obj(z, targets=tg).backward()
    start = time.perf_counter()
    for _ in range(repeat):
        loss = obj(z, targets=tg)
        loss.backward()
    return (time.perf_counter() - start) / repeat * 1e3


def state_mib(method: str, form: str, c: int, bank: int = 65536) -> float:
    obj = Objective(method, form, dim=c, bank_size=bank if method == "moco" else None)
    return sum(b.numel() * b.element_size() for b in obj.buffers()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    a = ap.parse_args()
    repeat = 3 if a.quick else 10
    batches = [64, 256, 1024] if a.quick else [64, 256, 1024, 4096]
    widths = [512, 2048] if a.quick else [512, 2048, 8192, 16384]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per forward+backward")
    print("\n## batch size sweep (C = 2048)")
    print(f"{'method':<14}" + "".join(f"{'N=' + str(n):>10}" for n in batches))
    for m, f in METHODS:
        print(
            f"{m:<14}" + "".join(f"{time_objective(m, f, n, 2048, repeat):>10.2f}" for n in batches)
        )
    print("\n## projector width sweep (N = 256)")
    print(f"{'method':<14}" + "".join(f"{'C=' + str(c):>10}" for c in widths))
    for m, f in METHODS:
        print(
            f"{m:<14}" + "".join(f"{time_objective(m, f, 256, c, repeat):>10.2f}" for c in widths)
        )
    print("\n## sample-set memory (MiB): F (C x C) vs a 65536-key memory bank (K x C)")
    print(f"{'C':>8}{'F (unigrad)':>14}{'bank (moco)':>14}")
    for c in widths:
        print(
            f"{c:>8}{state_mib('unigrad', 'grad', c):>14.1f}{state_mib('moco', 'loss', c):>14.1f}"
        )


if __name__ == "__main__":
    main()
