"""A tiny ImageFolder and the tiny training configuration that the tests and the bench scripts
share (the bench scripts run where pytest is not installed, so they cannot import conftest)."""

from __future__ import annotations

from pathlib import Path


def make_image_folder(
    root: Path, splits=("train", "val"), classes=3, per_class=16, size=16, seed=0
):
    """A tiny ImageFolder of random RGB PNGs: ROOT/<split>/c<k>/<i>.png."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in splits:
        for k in range(classes):
            d = root / split / f"c{k}"
            d.mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 256, size=(1, 1, 3))  # a class colour, so kNN can learn
            for i in range(per_class):
                noise = rng.integers(-60, 60, size=(size, size, 3))
                img = np.clip(base + noise, 0, 255).astype("uint8")
                Image.fromarray(img).save(d / f"{i}.png")
    return root


TINY = {
    "backbone": "resnet18",
    "width": 0.125,
    "cifar_stem": True,
    "proj_depth": 2,
    "proj_dim": 32,
    "image_size": 16,
    "batch_size": 16,
    "epochs": 2,
    "base_lr": 0.05,
    "warmup_epochs": 0.5,
    "pipeline": "fast",
    "knn_k": 5,
    "diag_every": 2,
    "probe_size": 16,
    "log_every": 2,
    "tensorboard": False,
    "blur_p": 0.0,
}
