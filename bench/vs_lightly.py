"""unigrad vs lightly 1.6.0 on the same work: same backbone, batch, views and recipe.

Per method (BYOL, SimCLR, Barlow Twins, VICReg, SimSiam):
1. loss check: both libraries' loss on the same embeddings;
2. step throughput (img/s, steady state, data loading included) of
   - lightly as its examples run it: lightly heads/losses, lightly's (torchvision-based)
     per-image transforms in DataLoader workers, fp32;
   - lightly with bf16 autocast (to separate the precision gain from the pipeline gain);
   - unigrad: its trainer step, fast tensor pipeline, amp auto.
Run bench/setup_lightly.sh first (lightly lives in bench/.lightly, never in unigrad's deps).

    .venv/bin/python bench/vs_lightly.py [--width 0.25] [--steps 8] [--methods byol,simclr]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent / ".lightly"))
from harness import CIFAR, machine, make_trainer, steady_state
from lightly import loss as LL
from lightly.models.modules import heads as LH
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms import SimCLRTransform
from torchvision.datasets import ImageFolder

from unigrad.core.objective import Objective
from unigrad.models.networks import resnet_backbone

METHODS = ("byol", "simclr", "barlow_twins", "vicreg", "simsiam")


# ------------------------------------------------------------------------------- loss check
def loss_check(c: int = 512, n: int = 256) -> None:
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(n, c, generator=g), torch.randn(n, c, generator=g)
    p0, p1 = torch.randn(n, c, generator=g), torch.randn(n, c, generator=g)
    ncs = LL.NegativeCosineSimilarity()
    rows = []
    ours = Objective("simclr", "loss", dim=c, tau=0.2)(z0, z1)
    rows.append(("simclr", float(LL.NTXentLoss(temperature=0.2)(z0, z1)), float(ours), "same"))
    ours = Objective("simsiam", "loss", dim=c)(z0, z1, targets=[z0, z1], pred=[p0, p1])
    lt = 0.5 * (ncs(p0, z1) + ncs(p1, z0))
    rows.append(("simsiam", float(lt), float(ours), "same"))
    ours = Objective("byol", "loss", dim=c)(z0, z1, targets=[z0, z1], pred=[p0, p1])
    rows.append(
        (
            "byol",
            float(2 + 2 * lt),
            float(ours),
            "lightly's example uses -cos; BYOL's 2-2cos = 2 + 2 x lightly",
        )
    )
    ours = Objective("vicreg", "loss", dim=c)(z0, z1)
    rows.append(("vicreg", float(LL.VICRegLoss()(z0, z1)), float(ours), "same"))
    bt = Objective("barlow_twins", "loss", dim=c, scale_loss=1.0)  # eq. 8 unscaled, as lightly
    ours = bt(z0, z1)
    rows.append(("barlow_twins", float(LL.BarlowTwinsLoss()(z0, z1)), float(ours), "same"))
    print("## loss on the same embeddings (N=256, C=512)")
    print(f"{'method':<14}{'lightly':>14}{'unigrad':>14}  note")
    for m, a, b, note in rows:
        print(f"{m:<14}{a:>14.6f}{b:>14.6f}  {note}")


# ------------------------------------------------------------------------------- lightly step
class LightlyModel(nn.Module):
    """The shape of lightly's examples/pytorch/<method>.py, heads sized like unigrad's."""

    def __init__(self, method: str, width: float, dim: int) -> None:
        super().__init__()
        self.method = method
        self.backbone, feat = resnet_backbone("resnet18", width, cifar_stem=True)
        if method == "byol":
            self.head = LH.BYOLProjectionHead(feat, dim, dim)
            self.pred = LH.BYOLPredictionHead(dim, dim // 4, dim)
        elif method == "simsiam":
            self.head = LH.SimSiamProjectionHead(feat, dim, dim)
            self.pred = LH.SimSiamPredictionHead(dim, dim // 4, dim)
        elif method == "simclr":
            self.head = LH.SimCLRProjectionHead(feat, dim, dim, num_layers=3)
        elif method == "barlow_twins":
            self.head = LH.BarlowTwinsProjectionHead(feat, dim, dim)
        else:
            self.head = LH.VICRegProjectionHead(feat, dim, dim)
        if method == "byol":
            self.backbone_m = copy.deepcopy(self.backbone)
            self.head_m = copy.deepcopy(self.head)
            deactivate_requires_grad(self.backbone_m)
            deactivate_requires_grad(self.head_m)
        self.loss = {
            "byol": LL.NegativeCosineSimilarity(),
            "simsiam": LL.NegativeCosineSimilarity(),
            "simclr": LL.NTXentLoss(temperature=0.2),
            "barlow_twins": LL.BarlowTwinsLoss(),
            "vicreg": LL.VICRegLoss(),
        }[method]

    def step_loss(self, x0: torch.Tensor, x1: torch.Tensor, m: float) -> torch.Tensor:
        z0, z1 = self.head(self.backbone(x0)), self.head(self.backbone(x1))
        if self.method == "byol":
            update_momentum(self.backbone, self.backbone_m, m)
            update_momentum(self.head, self.head_m, m)
            with torch.no_grad():
                t0 = self.head_m(self.backbone_m(x0))
                t1 = self.head_m(self.backbone_m(x1))
            return 0.5 * (self.loss(self.pred(z0), t1) + self.loss(self.pred(z1), t0))
        if self.method == "simsiam":
            return 0.5 * (
                self.loss(self.pred(z0), z1.detach()) + self.loss(self.pred(z1), z0.detach())
            )
        return self.loss(z0, z1)


def lightly_throughput(method: str, width: float, steps: int, bf16: bool, workers: int) -> float:
    torch.manual_seed(0)
    model = LightlyModel(method, width, 512)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    tf = SimCLRTransform(
        input_size=32,
        cj_prob=0.8,
        cj_strength=0.5,
        cj_hue=0.0,
        min_scale=0.2,
        random_gray_scale=0.2,
        gaussian_blur=0.0,
    )
    ds = ImageFolder(str(CIFAR / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=256,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    it = iter(loader)
    warmup = 2
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        (x0, x1), _ = next(it)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.step_loss(x0, x1, 0.99)
        opt.zero_grad()
        loss.float().backward()
        opt.step()
    rate = steps * 256 / (time.perf_counter() - start)
    it._shutdown_workers()  # type: ignore[attr-defined]  # before the next timing, not at gc
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--compile", default="off", help="unigrad's compile mode (off | step)")
    a = ap.parse_args()
    print(f"# {machine()}")
    loss_check()
    print(
        f"\n## step throughput, ResNet-18 CIFAR stem width {a.width}, batch 256, 2 views of "
        f"32 px, projector 3 x 512 (img/s, {a.steps} steps after 2 warm-up)"
    )
    print(
        f"{'method':<14}{'lightly fp32':>14}{'lightly bf16':>14}{'unigrad':>10}"
        f"{'ratio':>8}{'ratio(bf16)':>13}"
    )
    for m in a.methods.split(","):
        # first: its amp measurement sees a quiet host. On the CPU, where lightly trains here
        # (device auto would put unigrad on a GPU and compare two machines, issue 44)
        tr = make_trainer(method=m, width=a.width, compile=a.compile, device="cpu")
        if a.compile != "off":
            steady_state(tr, 1)  # the compilation, not timed
        ours, _ = steady_state(tr, a.steps)
        del tr
        l32 = lightly_throughput(m, a.width, a.steps, False, a.workers)
        l16 = lightly_throughput(m, a.width, a.steps, True, a.workers)
        print(
            f"{m:<14}{l32:>14.0f}{l16:>14.0f}{ours:>10.0f}{ours / l32:>8.2f}{ours / l16:>13.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
