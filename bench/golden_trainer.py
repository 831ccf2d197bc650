"""Exact checksums of 20 deterministic fp32 training steps through the real ``Trainer`` for every
method x form x variant: run before and after a refactor on the same host, the two files must be
identical (``diff``). Host-specific (CPU kernels), so the file is not committed; the float64
cross-host guard is ``tests/test_golden.py``.

    python bench/golden_trainer.py OUT.json [NAME ...]   # NAME: only the configs it names
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from golden import RECORDED_METHODS, method_forms
from tinydata import TINY, make_image_folder

from unigrad.config import build_config


def configs():
    yield from method_forms(RECORDED_METHODS).items()
    yield (
        "unigrad-multicrop-cutmix",
        {"method": "unigrad", "multi_crop": "2x16,2x8", "cutmix": True},
    )
    yield "byol-lars", {"method": "byol", "optimizer": "lars", "base_lr_bias": 0.02}
    yield "simclr-lars", {"method": "simclr", "optimizer": "lars", "weight_decay": 1e-3}
    yield "byol-adamw-wd", {"method": "byol", "optimizer": "adamw", "base_lr": 1e-3,
                            "weight_decay": 0.04, "weight_decay_end": 0.4}  # fmt: skip


def main(out: str, only: list[str]) -> None:
    from unigrad.engine.trainer import Trainer

    torch.set_num_threads(1)
    sums = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_image_folder(Path(tmp) / "data")
        for name, over in configs():
            if only and name not in only:
                continue
            cfg = build_config(
                TINY,
                {
                    "data": str(data),
                    "out": f"{tmp}/{name}",
                    "max_steps": 20,
                    "deterministic": True,
                    "amp": "off",
                    "diag_every": 0,
                    "knn_every": 0,
                    "epochs": 10,
                },
                over,
            )
            tr = Trainer(cfg, show_progress=False)
            tr.train()
            h = hashlib.sha256()
            for part in (tr.model, tr.target, tr.objective):
                for k, v in part.state_dict().items():
                    if not v.numel():  # an empty buffer (e.g. no staged bank keys) holds nothing
                        continue
                    h.update(k.encode())
                    h.update(v.detach().cpu().contiguous().numpy().tobytes())
            sums[name] = h.hexdigest()[:16]
            print(name, sums[name], flush=True)
    Path(out).write_text(json.dumps(sums, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
