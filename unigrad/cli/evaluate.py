"""Evaluation commands: ``knn``, ``linear``, ``semisup`` (of a checkpoint), ``report`` (of runs)
and ``export`` (the backbone as a state_dict and as safetensors + JSON)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from unigrad.cli import command
from unigrad.data.datasets import SPLITS, TORCHVISION
from unigrad.errors import UserError

JSON_HELP = "print one JSON object: top1, top5 (percent), n_train, n_eval, ..."


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        v = kind(text)
        if not math.isfinite(v) or v <= 0:  # nan passes "<= 0"
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
        return v

    return parse


def _checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", help="pretraining checkpoint written by `unigrad pretrain`")
    p.add_argument("--data", help="ImageFolder root with train/ and val/ (default: checkpoint's)")
    p.add_argument("--dataset", choices=TORCHVISION, help="a torchvision dataset instead of --data")
    p.add_argument("--data-root", default="data", help="where --dataset is stored")
    p.add_argument("--download", action="store_true", help="download --dataset if missing")
    p.add_argument("--split", default="val", choices=SPLITS, help="split to evaluate on")
    p.add_argument("--train-split", default="train", choices=SPLITS, help="labelled split")
    p.add_argument("--image-size", type=_positive(int), help="default: the checkpoint's")
    p.add_argument("--batch-size", type=_positive(int), default=256)
    p.add_argument("--workers", type=int, default=2, help="data loading processes")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes on stderr")


class Session:
    """What every checkpoint command needs: the backbone, its config, the data source and its
    evaluation splits (:class:`~unigrad.data.evaluation.EvalData`, the trainer's view), the
    device."""

    def __init__(self, a: argparse.Namespace) -> None:
        from unigrad.data.evaluation import EvalData
        from unigrad.data.sources import source_from_config
        from unigrad.engine.device import select_device
        from unigrad.eval.features import load_backbone

        self.args = a
        self.device = select_device(a.device)
        self.backbone, self.cfg = load_backbone(a.ckpt, self.device)
        self.image_size = a.image_size or int(self.cfg["image_size"] or 224)
        self.progress = False if a.quiet else None
        if a.data and a.dataset:
            raise UserError("pass either --data DIR or --dataset NAME, not both")
        data = a.data or (None if a.dataset else self.cfg.get("data"))
        dataset = a.dataset or (None if a.data else self.cfg.get("dataset"))
        if not data and not dataset:
            raise UserError(
                f"{a.ckpt} does not name its data: pass --data DIR (ImageFolder with train/ "
                f"and val/) or --dataset {'|'.join(TORCHVISION)}"
            )
        asked = argparse.Namespace(data=data, dataset=dataset, download=a.download)
        self.source = source_from_config(asked, root=a.data_root)
        self.eval = EvalData(
            self.source,
            self.image_size,
            train_split=a.train_split,
            eval_split=a.split,
            batch_size=a.batch_size,
            workers=a.workers,
            pin_memory=self.device.type == "cuda",
        )

    def note(self, text: str) -> None:
        if not self.args.quiet:
            print(f"note: {text}", file=sys.stderr)

    def splits(self, train_transform: Any = None) -> tuple[Any, Any, int]:
        """(train set, eval set, number of classes) as evaluation views; ``train_transform``
        replaces the train set's."""
        from unigrad.data.evaluation import check_same_classes

        train, test = self.eval.datasets(train_transform)
        a, b = getattr(train, "classes", None), getattr(test, "classes", None)
        check_same_classes(a, b, self.args.train_split, self.args.split)
        if a is not None and len(a) < 2:
            raise UserError(
                f"the {self.args.train_split} split has {len(a)} class ({', '.join(a)}); "
                "accuracy over one class is 100% by construction and measures nothing. "
                "Evaluate on data with at least 2 class folders"
            )
        return train, test, len(a) if a is not None else 0

    def loader(self, ds: Any, train: bool = False) -> Any:
        """Batches in order (the evaluation's); ``train``: shuffled, and a last batch of 1
        image (which batch norm in train mode cannot take) dropped."""
        from torch.utils.data import DataLoader

        if not train:
            return self.eval.loader(ds)
        return DataLoader(
            ds,
            batch_size=self.args.batch_size,
            shuffle=True,
            drop_last=len(ds) % self.args.batch_size == 1,
            persistent_workers=self.args.workers > 0,  # epochs reuse the processes
            num_workers=self.args.workers,
            pin_memory=self.device.type == "cuda",
        )

    def features(self, ds: Any) -> tuple[Any, Any]:
        """(features [N, D], labels [N]) of the backbone over ``ds``, as the trainer's."""
        return self.eval.extract(self.backbone, ds, self.device, self.progress)

    def emit(self, result: dict[str, Any], text: str) -> None:
        print(json.dumps(result) if self.args.json else text)


def _summary(name: str, r: dict[str, Any], split: str) -> str:
    return (
        f"{name} on {split}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  "
        f"({r['n_train']} train / {r['n_eval']} eval images)"
    )


@command("knn", "kNN accuracy of a checkpoint's backbone (cosine, exp(sim/t)-weighted votes)")
def _knn(p: argparse.ArgumentParser) -> None:
    _checkpoint_args(p)
    p.add_argument("--k", type=_positive(int), default=200, help="neighbours (clamped to bank)")
    p.add_argument("--temperature", type=_positive(float), default=0.1)

    def run(a: argparse.Namespace) -> int:
        from unigrad.eval.protocol import knn_scores

        s = Session(a)
        train, test, classes = s.splits()
        bank, bank_y = s.features(train)
        q, q_y = s.features(test)
        r = knn_scores(bank, bank_y, q, q_y, k=a.k, t=a.temperature, num_classes=classes or None)
        if r["k"] < a.k:
            s.note(f"k={a.k} is more than the {r['n_train']} training images; used k={r['k']}")
        s.emit(r, _summary(f"kNN (k={r['k']}, t={a.temperature})", r, a.split))
        return 0

    p.set_defaults(func=run)


@command("linear", "linear probe: frozen backbone + linear classifier, top-1/top-5")
def _linear(p: argparse.ArgumentParser) -> None:
    _checkpoint_args(p)
    p.add_argument("--epochs", type=_positive(int), default=90)
    p.add_argument("--lr", type=_positive(float), default=0.1, help="SGD lr (cosine to 0)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument(
        "--augment",
        action="store_true",
        help="standard protocol: random-resized-crop + flip every epoch through the frozen "
        "backbone (slow); default: features extracted once, no augmentation (fast)",
    )
    p.add_argument("--seed", type=int, default=0)

    def run(a: argparse.Namespace) -> int:
        import torch

        from unigrad.eval.linear import train_linear_augmented, train_transform
        from unigrad.eval.protocol import head_accuracy, linear_scores

        torch.manual_seed(a.seed)
        s = Session(a)
        kw = {"epochs": a.epochs, "lr": a.lr, "weight_decay": a.weight_decay}
        if a.augment:
            train, test, classes = s.splits(train_transform(s.image_size))
            head = train_linear_augmented(
                s.backbone,
                s.loader(train, train=True),
                classes,
                s.device,
                progress=s.progress,
                **kw,
            )
            q, q_y = s.features(test)
            r = {**head_accuracy(head, q, q_y), "n_train": len(train), "n_eval": q.shape[0]}
        else:
            train, test, classes = s.splits()
            f, y = s.features(train)
            q, q_y = s.features(test)
            n_cls = classes or int(y.max()) + 1
            r = linear_scores(
                f, y, q, q_y, seed=a.seed, num_classes=n_cls, progress=s.progress, **kw
            )
        r.update(epochs=a.epochs, augment=a.augment)
        s.emit(r, _summary(f"linear probe ({a.epochs} epochs)", r, a.split))
        return 0

    p.set_defaults(func=run)


def _subset_file(a: argparse.Namespace, fraction: float) -> Path:
    if a.out:
        return Path(a.out)
    return Path(a.ckpt).parent / f"semisup-{fraction * 100:.3g}pct-seed{a.seed}.json"


@command("semisup", "semi-supervised: fine-tune backbone + linear head on a label fraction")
def _semisup(p: argparse.ArgumentParser) -> None:
    _checkpoint_args(p)
    p.add_argument("--fraction", type=float, help="labelled share in (0, 1], e.g. 0.01 or 0.1")
    p.add_argument("--epochs", type=_positive(int), help="default: 60 below 10%%, else 30")
    p.add_argument("--lr", type=_positive(float), default=0.01, help="backbone lr")
    p.add_argument("--head-lr", type=_positive(float), default=0.1)
    p.add_argument("--seed", type=int, default=0, help="seed of the label subset and training")
    p.add_argument("--indices", help="reuse the subset of an earlier run's JSON (no --fraction)")
    p.add_argument(
        "--out", help="JSON file for the subset's indices and the result (default: beside CKPT)"
    )

    def run(a: argparse.Namespace) -> int:
        import torch
        from torch.utils.data import Subset

        from unigrad.eval.linear import train_transform
        from unigrad.eval.protocol import (
            check_semisup_request,
            finetune_scores,
            semisup_epochs,
            semisup_subset,
        )

        check_semisup_request(a.fraction, a.indices is not None)
        torch.manual_seed(a.seed)
        s = Session(a)
        train, test, classes = s.splits(train_transform(s.image_size))
        targets = getattr(train, "targets", None)  # ImageFolder, CIFAR; STL10 has .labels
        labels = torch.as_tensor(targets if targets is not None else train.labels)
        given = _load_indices(a.indices, len(train)) if a.indices is not None else None
        idx, fraction = semisup_subset(labels, fraction=a.fraction, indices=given, seed=a.seed)
        out = _subset_file(a, fraction)
        record: dict[str, Any] = {"fraction": fraction, "seed": a.seed, "indices": idx}
        if hasattr(train, "samples"):
            root = Path(train.root)
            record["files"] = [str(Path(train.samples[i][0]).relative_to(root)) for i in idx]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record))
        epochs = a.epochs or semisup_epochs(fraction)
        scores = finetune_scores(
            s.backbone,
            s.loader(Subset(train, idx), train=True),
            s.loader(test),
            classes or int(labels.max()) + 1,
            s.device,
            epochs=epochs,
            lr=a.lr,
            head_lr=a.head_lr,
            progress=s.progress,
        )
        r = {
            "top1": scores["top1"],
            "top5": scores["top5"],
            "n_train": len(idx),
            "n_eval": scores["n_eval"],
            "fraction": fraction,
            "epochs": epochs,
            "indices_file": str(out),
        }
        out.write_text(json.dumps({**record, "result": r}))
        s.emit(r, _summary(f"fine-tuned on {fraction * 100:.3g}% of the labels", r, a.split))
        return 0

    p.set_defaults(func=run)


def _load_indices(path: str, n: int) -> list[int]:
    try:
        idx = json.loads(Path(path).read_text())["indices"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--indices {path}: not a subset file written by semisup ({e})") from None
    if not idx or not all(isinstance(i, int) and 0 <= i < n for i in idx):
        raise UserError(f"--indices {path}: indices must be integers in [0, {n}) for this split")
    return idx


@command("report", "plots (PNG) and report.md of one or more runs, overlaid like paper fig. 2")
def _report(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (with metrics.csv)")
    p.add_argument("--out", help="output folder (default for one run: RUN/report)")

    def run(a: argparse.Namespace) -> int:
        from unigrad.experiments.report import write_report

        print(write_report(a.runs, a.out))
        return 0

    p.set_defaults(func=run)


@command(
    "export",
    "write the online backbone as a state_dict (.pth) and as .safetensors + .json (portable)",
)
def _export(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = """\
Write the online backbone of CKPT (atomically) in two formats, side by side:

  OUT.pth           a plain state_dict
  OUT.safetensors   the same tensors; the backbone's description (architecture, width,
                    cifar_stem, norm, feat_dim, image_size, mean/std, method, data, unigrad
                    version) as JSON in its metadata
  OUT.json          that description, for reading

Load the safetensors file back into a ready module (eval mode) with

    from unigrad.eval.export import load_exported_backbone
    net = load_exported_backbone("OUT.safetensors")   # your own module: model=YourNet()

For resnet18/34/50/101 at width 1 without the CIFAR stem the .pth loads strictly into torchvision:

    m = torchvision.models.resnet18()
    m.fc = torch.nn.Identity()
    m.load_state_dict(torch.load("backbone.pth", weights_only=True), strict=True)"""
    p.add_argument("ckpt", help="pretraining checkpoint written by `unigrad pretrain`")
    p.add_argument(
        "--out",
        help="output .pth (default: CKPT with suffix .backbone.pth); the .safetensors and "
        ".json go beside it",
    )

    def run(a: argparse.Namespace) -> int:
        from unigrad.engine.files import check_writable
        from unigrad.eval.export import export_backbone, export_safetensors
        from unigrad.models.networks import CUSTOM

        out = Path(a.out or Path(a.ckpt).with_suffix(".backbone.pth"))
        check_writable(out, "--out", folder=False)
        info = export_backbone(a.ckpt, out)
        port = export_safetensors(a.ckpt, out.with_suffix(".safetensors"))
        print(f"wrote {info.path} ({info.n_tensors} tensors)")
        print(
            f"wrote {port.path} and {port.path.with_suffix('.json')}: load with "
            f"unigrad.load_exported_backbone({str(port.path)!r}"
            + (", model=YourNet())" if info.config["backbone"] == CUSTOM else ")")
        )
        c = info.config
        if info.torchvision_model:
            print(
                f"{info.path.name} loads with strict=True into "
                f"torchvision.models.{info.torchvision_model}() with fc = torch.nn.Identity()"
            )
        else:
            print(
                f"{info.path.name} is not torchvision-compatible (backbone={c['backbone']} "
                f"width={c['width']} cifar_stem={c['cifar_stem']})"
            )
        return 0

    p.set_defaults(func=run)
