"""The ``data`` section of the configuration: where the images come from and how they are read
(the augmentation recipe is the ``augment`` section, :class:`unigrad.data.recipe.AugmentConfig`)."""

from dataclasses import dataclass

from unigrad.core.section import Section, setting
from unigrad.errors import UserError

PIPELINES = ("auto", "fast", "standard")
DECODES = ("auto", "cpu", "device")


@dataclass
class DataConfig(Section):
    name = "data"

    data: str | None = setting(
        None, "ImageFolder root with train/ (val/, test/)", "baseline", "untrained"
    )
    dataset: str | None = setting(
        None, "torchvision dataset: cifar10 | cifar100 | stl10", "baseline", "untrained"
    )
    download: bool = setting(False, "download `dataset` if missing", "untrained")
    fallback_dataset: str | None = setting(
        None, "torchvision dataset to download if `data` is missing", "untrained"
    )
    train_split: str = setting("train", "the split to pretrain on")
    eval_split: str = setting("val", "the split the kNN / linear evaluation reports", "baseline")
    pipeline: str = setting(
        "auto", "fast | standard | auto (fast when the split fits in memory)", "untrained"
    )
    workers: int | None = setting(
        None,
        "DataLoader workers of the standard pipeline (None: the cores present, <= 8)",
        "untrained",
    )
    decode: str = setting(
        "auto",
        "standard pipeline on a folder: JPEG decoding on cpu (workers) | device (the "
        "GPU, torchvision.io) | auto (device when training on CUDA)",
        "untrained",
    )
    bad_images: str = setting("skip", "skip (warn, count) | fail: unreadable images", "untrained")

    def check(self) -> None:
        from unigrad.data.datasets import TORCHVISION

        if self.data is not None and self.dataset is not None:
            raise UserError("pass either data (a folder) or dataset (a name), not both")
        for key in ("dataset", "fallback_dataset"):
            if getattr(self, key) not in (None, *TORCHVISION):
                names = f"{', '.join(TORCHVISION[:-1])} or {TORCHVISION[-1]}"
                raise UserError(f"{key} must be {names}")
        if self.pipeline not in PIPELINES:
            raise UserError("pipeline must be auto, fast or standard")
        if self.bad_images not in ("skip", "fail"):
            raise UserError("bad_images must be skip or fail")
        if self.workers is not None and self.workers < 0:
            raise UserError(f"workers must be >= 0 (or null: from the cores), got {self.workers}")
        if self.decode not in DECODES:
            raise UserError(f"decode must be auto, cpu or device, got {self.decode!r}")
