"""Size of each method's gradient with respect to the raw projector output z, at the quick
protocol's shape (N = 256, C = 512), on synthetic z with a common mean like a fresh projector's.
Under plain SGD with one learning rate for every method, this is the step size each method takes.

    .venv/bin/python bench/grad_scale.py [--n 256] [--dim 512]
"""

from __future__ import annotations

import argparse

import torch

from unigrad.core.objective import Objective
from unigrad.core.targets import TargetOut

FORMS = [  # (method, form, variant, hyperparameters)
    ("unigrad", "grad", None, {}),
    ("simclr", "grad", "b", {}),
    ("directpred", "grad", "e", {}),
    ("vicreg", "grad", "j", {}),
    ("vicreg", "grad", "i", {}),
    ("barlow_twins", "grad", "f", {}),
    ("barlow_twins", "loss", None, {}),
    ("barlow_twins", "grad", "h", {}),
    ("barlow_twins", "grad", "f", {"scale_loss": 1.0}),  # eq. 8 summed over channels
    ("barlow_twins", "loss", None, {"scale_loss": 1.0}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--dim", type=int, default=512)
    a = ap.parse_args()
    torch.manual_seed(0)
    base = 0.1 * torch.randn(a.n, a.dim) + torch.randn(1, a.dim)
    ref = 0.0
    print(f"{'method':<13} {'form':<5} {'row':<5} {'|dL/dz| per sample':>19} {'x UniGrad':>10}")
    for method, form, variant, hp in FORMS:
        obj = Objective(method, form, variant, dim=a.dim, **hp)
        z = [(base + 0.05 * torch.randn_like(base)).requires_grad_() for _ in range(2)]
        t = TargetOut(pos=[x.detach() for x in z], neg=[x.detach() for x in z])
        obj(z, targets=t)  # first call fills the EMA correlation matrix
        loss = obj(z, targets=t)
        g = torch.autograd.grad(loss, z)[0].norm(dim=1).mean().item()
        ref = ref or g  # UniGrad comes first
        extra = " ".join(f"{k}={v:g}" for k, v in hp.items())
        line = f"{method:<13} {form:<5} {variant or '-':<5} {g:19.3e} {g / ref:10.2f}  {extra}"
        print(line.rstrip())


if __name__ == "__main__":
    main()
