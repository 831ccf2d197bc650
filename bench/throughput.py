"""Step throughput (img/s, steady state, data included) of every method in loss and gradient
form, ResNet-18 CIFAR stem, batch 256, two views; and the fast vs standard pipeline for UniGrad.

    .venv/bin/python bench/throughput.py [--widths 0.25,1] [--images 5000] [--pipelines-only]

Each measurement runs for about ``--images`` images (at least 3 steps) after 2 warm-up steps.
"""

from __future__ import annotations

import argparse

from harness import machine, make_trainer, steady_state

from unigrad.methods import METHODS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", default="0.25,1")
    ap.add_argument("--images", type=int, default=5000, help="images per measurement")
    ap.add_argument("--pipelines-only", action="store_true")
    a = ap.parse_args()
    widths = [float(w) for w in a.widths.split(",")]

    def steps(w: float) -> int:  # wider backbones are slower: fewer steps for the same time
        return max(3, round(a.images / 256 * min(1.0, 0.25 / w) ** 2))

    print(f"# {machine()}")
    print(
        "\n## UniGrad step: fast (in-memory tensor) vs standard (torchvision per image, "
        "2 workers) pipeline, img/s"
    )
    print(f"{'width':<8}{'fast':>8}{'standard':>10}{'ratio':>8}")
    for w in widths:
        fast, _ = steady_state(make_trainer(width=w, pipeline="fast"), steps(w))
        std, _ = steady_state(make_trainer(width=w, pipeline="standard", workers=2), steps(w))
        print(f"{w:<8}{fast:>8.0f}{std:>10.0f}{fast / std:>8.2f}", flush=True)
    if a.pipelines_only:
        return
    print("\n## every method and form (fast pipeline, amp auto), img/s")
    print(f"{'method':<14}{'form':<6}" + "".join(f"{'w=' + str(w):>10}" for w in widths))
    for name, spec in METHODS.items():
        for form in spec.forms:
            cells = []
            for w in widths:
                ips, _ = steady_state(make_trainer(method=name, form=form, width=w), steps(w))
                cells.append(f"{ips:>10.0f}")
            print(f"{name:<14}{form:<6}" + "".join(cells), flush=True)


if __name__ == "__main__":
    main()
