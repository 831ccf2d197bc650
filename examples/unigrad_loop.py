"""UniGrad in your own training loop: momentum target, F from the target's outputs, gradient form.

python examples/unigrad_loop.py --data ../shared/data/cifar10/train --steps 100
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
ap.add_argument("--out", default="unigrad_loop.pt")
args = ap.parse_args()

backbone = torchvision.models.resnet18()
feat_dim = backbone.fc.in_features
backbone.fc = nn.Identity()  # [N, 3, H, W] -> [N, 512] features
encoder = nn.Sequential(backbone, mlp(feat_dim, 512, 512, depth=3))  # -> z [N, 512]
target = TargetBranch("momentum", encoder)  # an EMA copy of the encoder, never trained directly
# UniGrad's objective owns F (a [512, 512] buffer): move it with .to(device), save its state_dict.
objective = Objective("unigrad", "grad", dim=512)  # lambda, rho: defaults (see `unigrad methods`)

views = MultiViewTransform(image_size=32)  # PIL image -> [view0, view1], each [3, 32, 32]
data = torchvision.datasets.ImageFolder(args.data, transform=views)
loader = DataLoader(data, args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers)
if not len(loader):  # drop_last and fewer images than one batch: no step would ever run
    sys.exit(f"error: {args.data}: {len(data)} images, fewer than --batch-size {args.batch_size}")
params = [*encoder.parameters(), *objective.parameters()]  # the objective's: learnable loss parts
opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
momentum = cosine_momentum(0.99, 1.0, args.steps)  # per-step EMA momentum, [steps]

step = 0
while step < args.steps:
    for (x0, x1), _ in loader:
        z0, z1 = encoder(x0), encoder(x1)
        t = target([x0, x1], [z0, z1])  # TargetOut: the momentum outputs (positives and F's input)
        loss = objective(z0, z1, targets=t)  # surrogate: its gradient is -u2 + lambda F u1
        opt.zero_grad()
        loss.backward()
        opt.step()
        objective.after_step()  # sample-set update after the step (bank keys)
        target.update(encoder, float(momentum[step]), step + 1)  # EMA after the optimiser step
        step += 1
        print(f"step {step}: positive cosine {objective.stats['pos_sim']:.3f}")
        if step == args.steps:
            break
state = {"encoder": encoder, "target": target, "objective": objective}  # target: the EMA copy
torch.save({k: m.state_dict() for k, m in state.items()}, args.out)
