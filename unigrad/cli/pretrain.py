"""``unigrad pretrain``: train a backbone with any method / form / target."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from unigrad.cli import command
from unigrad.config import Config, build_config, load_yaml, parse_set, preset_names

#: CLI flag -> config key, for flags that map one to one.
FLAGS = {
    "method": str,
    "form": str,
    "variant": str,
    "target": str,
    "data": str,
    "dataset": str,
    "fallback_dataset": str,
    "out": str,
    "epochs": int,
    "batch_size": int,
    "backbone": str,
    "width": float,
    "multi_crop": str,
    "seed": int,
    "max_steps": int,
    "device": str,
}


def config_from_args(a: argparse.Namespace) -> Config:
    """Preset (or the run's own config.yaml on --resume) -> flags -> --set."""
    layers: list[dict[str, Any]] = []
    run_cfg = Path(a.out) / "config.yaml" if a.out else None
    if a.resume and run_cfg is not None and run_cfg.exists():
        layers.append(load_yaml(str(run_cfg)))
    for p in a.preset or []:
        layers.append(load_yaml(p))
    flags = {k: getattr(a, k) for k in FLAGS if getattr(a, k) is not None}
    for k in ("cifar_stem", "cutmix", "download"):
        if getattr(a, k):
            flags[k] = True
    layers.append(flags)
    layers.append(parse_set(a.set or []))
    return build_config(*layers)


@command("pretrain", "pretrain a backbone (writes RUN/config.yaml, RUN/metrics.csv, RUN/last.ckpt)")
def _pretrain(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        "--config",
        action="append",
        metavar="NAME|FILE",
        help=f"YAML preset ({', '.join(preset_names())}) or file; repeatable, later ones win",
    )
    from unigrad.methods import METHODS

    p.add_argument("--method", help=", ".join(METHODS) + " (`unigrad methods` lists them)")
    p.add_argument("--form", help="loss or grad (default: the method's)")
    p.add_argument(
        "--variant", help="gradient-form row, e.g. f, g, h (Barlow Twins); see `unigrad methods`"
    )
    p.add_argument("--target", help="shared, stopgrad, momentum, momentum_pos, snapshot")
    p.add_argument("--data", help="ImageFolder root with train/ (val/, test/)")
    p.add_argument("--dataset", help="torchvision dataset: cifar10, cifar100, stl10")
    p.add_argument("--download", action="store_true", help="download --dataset if missing")
    p.add_argument(
        "--fallback-dataset",
        dest="fallback_dataset",
        help="torchvision dataset to download when --data does not exist",
    )
    p.add_argument("--out", help="run directory")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int, help="global batch size")
    p.add_argument(
        "--backbone",
        help="resnet18, resnet34, resnet50, resnet101, or timm:NAME for any timm model "
        "(pip install 'unigrad[timm]')",
    )
    p.add_argument(
        "--cifar-stem",
        dest="cifar_stem",
        action="store_true",
        help="3x3 stride-1 first conv, no max-pool (32 px images; ResNets only)",
    )
    p.add_argument("--width", type=float, help="backbone channel multiplier (ResNets only)")
    p.add_argument("--multi-crop", dest="multi_crop", metavar="GxS,LxS", help="e.g. 2x32,6x16")
    p.add_argument(
        "--cutmix",
        action="store_true",
        help="CutMix on the online views (needs a momentum or snapshot target)",
    )
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--max-steps",
        dest="max_steps",
        type=int,
        help="stop after this many steps, early within the run: the lr and EMA schedules stay "
        "those of --epochs (a later --resume with a larger --max-steps continues them)",
    )
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument(
        "--resume", action="store_true", help="continue RUN from its last good checkpoint"
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")

    def run(a: argparse.Namespace) -> int:
        from unigrad.core import dist
        from unigrad.engine.trainer import Interrupted, Trainer

        a.resume = a.resume or dist.restart_count() > 0  # a torchrun restart is a resume
        cfg = config_from_args(a)

        try:  # under torchrun, main() ends the process group after this returns
            final = Trainer(cfg, resume=a.resume, show_progress=not a.quiet).fit()
        except Interrupted as e:
            if dist.is_main():
                print(f"{e}; continue with: unigrad pretrain --out {cfg.out} --resume")
            return 128 + e.signum
        if dist.is_main():
            if a.json:
                print(json.dumps(final))
            elif final:
                print("final: " + ", ".join(f"{k} {v:.2f}" for k, v in final.items()))
        return 0

    p.set_defaults(func=run)
