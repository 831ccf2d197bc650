"""The data path alone (no network): img/s of two 224-px views from a folder of large JPEGs.

    .venv/bin/python bench/data_path.py [--images 400] [--workers 2] [--batch 32] [--epochs 2]

Makes ``/tmp/unigrad-jpegs`` (once): ``--images`` CIFAR-10 training images upscaled to a random
300-500 x 300-500 px each (bicubic) and saved as JPEG (quality 90) in ImageFolder layout; never
in the repository. Then times, over ``--epochs`` epochs after one warm-up batch, in
``--workers`` DataLoader workers each:

* anchor: torchvision v2 per image and per view (``MultiViewTransform``, what lightly does) on
  PIL's full decode, in a plain DataLoader (float32 views);
* standard: unigrad's ``pipeline=standard`` on a folder (:class:`unigrad.data.pipeline.CropData`):
  crops cut in the workers from a reduced JPEG decode, the rest batched;
* with a GPU also ``decode=device`` (nvjpeg through torchvision) and the views on the GPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from harness import CIFAR, machine
from PIL import Image
from torch.utils.data import DataLoader

from unigrad.config import Config
from unigrad.data.augment import AugmentSpec, MultiViewTransform
from unigrad.data.datasets import SafeImageFolder
from unigrad.data.pipeline import CropData

FOLDER = Path("/tmp/unigrad-jpegs")


def make_folder(n: int, seed: int = 0) -> Path:
    """``n`` CIFAR-10 training images upscaled to 300-500 px sides as JPEGs under FOLDER/train."""
    done = FOLDER / f".done-{n}"
    if done.exists():
        return FOLDER
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in (CIFAR / "train").iterdir())
    for k in range(n):
        c = classes[k % len(classes)]
        src = sorted((CIFAR / "train" / c).iterdir())[k // len(classes)]
        w, h = (int(v) for v in rng.integers(300, 501, 2))
        out = FOLDER / "train" / c / f"{k:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(src).convert("RGB").resize((w, h), Image.Resampling.BICUBIC).save(
            out, quality=90
        )
    done.touch()
    return FOLDER


def timed(batches, epochs: int) -> float:
    """img/s over ``epochs`` calls of ``batches(epoch)``, from the first batch on (workers
    started, nothing drawn and thrown away)."""
    n, t0 = 0, None
    for e in range(epochs):
        for views in batches(e):
            views[0].sum()  # the near-free consumer
            if t0 is None:
                t0 = time.perf_counter()
                continue
            n += views[0].shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    a = ap.parse_args()
    root = make_folder(a.images)
    spec = AugmentSpec(image_size=224)
    print(f"# {machine()}")
    print(
        f"# {a.images} JPEGs of 300-500 px, two 224-px views, batch {a.batch}, {a.workers} workers"
    )
    results = {}

    folder = SafeImageFolder(str(root / "train"), transform=MultiViewTransform(spec))
    loader = DataLoader(
        folder, batch_size=a.batch, shuffle=True, drop_last=True, num_workers=a.workers,
        persistent_workers=a.workers > 0,
    )  # fmt: skip
    anchor = timed(lambda e: (v for v, _ in loader), a.epochs)
    results["anchor (torchvision v2 per image)"] = anchor
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        for decode in ("cpu", "device") if dev == "cuda" else ("cpu",):
            cfg = Config(
                data=str(root), pipeline="standard", image_size=224, batch_size=a.batch,
                workers=a.workers, decode=decode,
            )  # fmt: skip
            data = CropData(cfg, torch.device(dev), SafeImageFolder(str(root / "train")))
            ips = timed(lambda e, d=data: (b.views for b in d.epoch(e, 0, None)), a.epochs)
            results[f"standard ({dev}, decode {decode})"] = ips
            if dev == "cuda":
                torch.cuda.synchronize()
    base = results["anchor (torchvision v2 per image)"]
    print(f"{'path':<40}{'img/s':>8}{'x anchor':>10}")
    for k, v in results.items():
        print(f"{k:<40}{v:>8.1f}{v / base:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
