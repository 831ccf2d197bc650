"""SimCLR in your own training loop: a shared target and NT-Xent over the batch (loss form).

The gradient form of the same method is one argument away: Objective("simclr", "grad", "b", ...)
(Table 2 row b: -u2 + sum_j softmax_j v_j over the batch). lightly: NTXentLoss(temperature=0.2).

    python examples/contrastive.py --data ../shared/data/cifar10/train --steps 100
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
backbone.fc = nn.Identity()  # [N, 3, H, W] -> [N, 512]
encoder = nn.Sequential(backbone, mlp(feat_dim, 512, 128, depth=2))  # -> z [N, 128]
objective = Objective("simclr", "loss", dim=128, tau=0.2)  # stateless: nothing to save

data = torchvision.datasets.ImageFolder(args.data, transform=MultiViewTransform(image_size=32))
loader = DataLoader(data, args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers)
if not len(loader):  # drop_last and fewer images than one batch: no step would ever run
    sys.exit(f"error: {args.data}: {len(data)} images, fewer than --batch-size {args.batch_size}")
params = [*encoder.parameters(), *objective.parameters()]  # the objective's: learnable loss parts
opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)

step = 0
while step < args.steps:
    for (x0, x1), _ in loader:
        loss = objective(encoder(x0), encoder(x1))  # shared target: both views get gradients
        opt.zero_grad()
        loss.backward()
        opt.step()
        objective.after_step()  # sample-set update after the step (bank keys)
        step += 1
        print(f"step {step}: NT-Xent {loss.item():.4f}")
        if step == args.steps:
            break
