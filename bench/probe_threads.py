"""The online probe's SGD step alone (issue 36) with 1 and 2 intra-op threads: features of the
cifar-quick network (256 x 128, 10 classes). Run it while another job uses the cores to see
what spin-waiting OpenMP threads cost on shared cores.

    .venv/bin/python bench/probe_threads.py
"""

from __future__ import annotations

import time

import torch
from harness import machine

from unigrad.eval.online_probe import OnlineProbe


def per_call_ms(probe: OnlineProbe, feats: torch.Tensor, labels: torch.Tensor, n: int = 50):
    probe.train_on(feats, labels)
    t = time.perf_counter()
    for _ in range(n):
        probe.train_on(feats, labels)
    return 1000 * (time.perf_counter() - t) / n


def main() -> None:
    torch.set_num_threads(2)
    print(f"# {machine()}")
    feats, labels = torch.randn(256, 128), torch.randint(0, 10, (256,))
    probe = OnlineProbe(128, 10)
    print(f"train_on, 1 thread (as the probe runs): {per_call_ms(probe, feats, labels):.2f} ms")
    torch.set_num_threads = lambda n: None  # the old behaviour: the caller's 2 threads
    print(f"train_on, 2 threads: {per_call_ms(probe, feats, labels):.2f} ms")


if __name__ == "__main__":
    main()
