"""BYOL in your own training loop: predictor, momentum target, 2 - 2 cos (loss form).

lightly: NegativeCosineSimilarity (which is -cos: this loss is 2 + 2 x lightly's), update_momentum
and cosine_schedule are TargetBranch.update and cosine_momentum here.

    python examples/asymmetric.py --data ../shared/data/cifar10/train --steps 100
"""

import argparse
import sys

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader

from unigrad import MultiViewTransform, Objective, TargetBranch, cosine_momentum, mlp

ap = argparse.ArgumentParser()
ap.add_argument("--data", default="../shared/data/cifar10/train", help="an ImageFolder")
ap.add_argument("--steps", type=int, default=100)
ap.add_argument("--batch-size", type=int, default=256)
ap.add_argument("--workers", type=int, default=2)
args = ap.parse_args()

backbone = torchvision.models.resnet18()
feat_dim = backbone.fc.in_features
backbone.fc = nn.Identity()
encoder = nn.Sequential(backbone, mlp(feat_dim, 1024, 256, depth=2))  # -> z [N, 256]
predictor = mlp(256, 1024, 256, depth=2)  # -> p [N, 256]
target = TargetBranch("momentum", encoder)  # EMA copy: save target.state_dict() with the model
objective = Objective("byol", "loss", dim=256)

# BYOL's asymmetric recipe: blur always on view 0, rarely on view 1; solarize on view 1 only
views = MultiViewTransform(image_size=32, blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2])
data = torchvision.datasets.ImageFolder(args.data, transform=views)
loader = DataLoader(data, args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers)
if not len(loader):  # drop_last and fewer images than one batch: no step would ever run
    sys.exit(f"error: {args.data}: {len(data)} images, fewer than --batch-size {args.batch_size}")
params = [*encoder.parameters(), *predictor.parameters(), *objective.parameters()]
opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
momentum = cosine_momentum(0.99, 1.0, args.steps)

step = 0
while step < args.steps:
    for (x0, x1), _ in loader:
        z = [encoder(x0), encoder(x1)]
        t = target([x0, x1], z)  # momentum outputs, computed without gradients
        loss = objective(z, targets=t, pred=[predictor(zi) for zi in z])
        opt.zero_grad()
        loss.backward()
        opt.step()
        objective.after_step()  # sample-set update after the step (bank keys)
        target.update(encoder, float(momentum[step]), step + 1)
        step += 1
        print(f"step {step}: loss {loss.item():.4f}")
        if step == args.steps:
            break
