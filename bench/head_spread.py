"""How far apart a network puts different images before any training (BENCHMARKS §11).

For each run record given (a ``config.yaml`` of a committed run), build its network at two seeds
and print the mean cosine between different images of the backbone's features and of the l2-
normalised head output, over 256 val images in train mode (batch statistics, as in the step).
A value near 1 is an output that starts collapsed (DINO's BN-free head: 0.90; a projector with
BN: about 0.3).

    python bench/head_spread.py bench/grid_results/protos/dino-loss-s0/config.yaml ...
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from harness import CIFAR, machine
from torchvision import datasets, transforms

from unigrad.config import load_yaml
from unigrad.models.build import model_from_config

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)


def mean_cosine(z: torch.Tensor) -> float:
    """Mean cosine between different rows of z [N, C]."""
    z = F.normalize(z, dim=1)
    s = z @ z.T
    n = s.shape[0]
    return float((s.sum() - s.diagonal().sum()) / (n * (n - 1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="+", help="config.yaml files of runs")
    ap.add_argument("--images", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(1)
    norm = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    val = datasets.ImageFolder(str(CIFAR / "val"), norm)
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
                f"{path}  seed {seed}: backbone {mean_cosine(feats):.3f}, "
                f"head output {mean_cosine(out):.3f}"
            )


if __name__ == "__main__":
    main()
