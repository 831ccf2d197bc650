"""How far apart a network puts different images before any training (BENCHMARKS §11).

For each run record given (a ``config.yaml`` of a committed run), build its network at two seeds
and print the mean cosine between different images (the runs' ``diag/neg_cos``) of the
backbone's features and of the head output, over 256 val images in train mode (batch
statistics, as in the step). A value near 1 is an output that starts collapsed.

    python bench/head_spread.py bench/grid_results/protos/dino-loss-s0/config.yaml ...
"""

from __future__ import annotations

import argparse

import torch
from harness import CIFAR, machine
from torchvision import datasets

from unigrad.config import load_yaml
from unigrad.data.evaluation import eval_transform
from unigrad.eval.diagnostics import mean_neg_cos
from unigrad.models.build import model_from_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="+", help="config.yaml files of runs")
    ap.add_argument("--images", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(1)
    val = datasets.ImageFolder(str(CIFAR / "val"), eval_transform(32))  # as the runs normalise
    pick = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[: args.images]
    x = torch.stack([val[int(i)][0] for i in pick])
    print(f"# {machine()}; {args.images} val images, train mode")
    for path in args.configs:
        record = load_yaml(path)
        for seed in (0, 1):
            torch.manual_seed(seed)
            model = model_from_config(record).train()
            with torch.no_grad():
                feats = model.encoder.backbone(x)
                out = model.encoder.run_heads(feats)
            print(
                f"{path}  seed {seed}: backbone {mean_neg_cos(feats, feats):.3f}, "
                f"head output {mean_neg_cos(out, out):.3f}"
            )


if __name__ == "__main__":
    main()
