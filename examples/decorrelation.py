"""Barlow Twins in your own training loop, in its gradient form (Table 2 row f).

A gradient form returns a surrogate whose gradient is the paper's -A u2 + lambda (...) term; its
value means nothing, so log objective.stats. The loss form is Objective("barlow_twins", "loss",
...): lightly's BarlowTwinsLoss(lambda_param=0.005) divided by C (scale_loss=1.0 gives eq. 8 as is).

    python examples/decorrelation.py --data ../shared/data/cifar10/train --steps 100
"""

import argparse
import sys

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader

from unigrad import MultiViewTransform, Objective, mlp

ap = argparse.ArgumentParser()
ap.add_argument("--data", default="../shared/data/cifar10/train", help="an ImageFolder")
ap.add_argument("--steps", type=int, default=100)
ap.add_argument("--batch-size", type=int, default=256)
ap.add_argument("--workers", type=int, default=2)
args = ap.parse_args()

backbone = torchvision.models.resnet18()
feat_dim = backbone.fc.in_features
backbone.fc = nn.Identity()
encoder = nn.Sequential(backbone, mlp(feat_dim, 1024, 1024, depth=3))  # -> z [N, 1024]
objective = Objective("barlow_twins", "grad", "f", dim=1024)  # lambda 0.005 (`unigrad methods`)

data = torchvision.datasets.ImageFolder(args.data, transform=MultiViewTransform(image_size=32))
loader = DataLoader(data, args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers)
if not len(loader):  # drop_last and fewer images than one batch: no step would ever run
    sys.exit(f"error: {args.data}: {len(data)} images, fewer than --batch-size {args.batch_size}")
params = [*encoder.parameters(), *objective.parameters()]  # the objective's: learnable loss parts
opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)

step = 0
while step < args.steps:
    for (x0, x1), _ in loader:
        loss = objective(encoder(x0), encoder(x1))  # surrogate of the row-f gradient
        opt.zero_grad()
        loss.backward()
        opt.step()
        objective.after_step()  # sample-set update after the step (bank keys)
        step += 1
        stats = ", ".join(f"{k} {v.item():.3f}" for k, v in objective.stats.items())
        print(f"step {step}: {stats}")
        if step == args.steps:
            break
