"""Labels travel with the batch on every data path (issue 42 item 5): the fast pipeline, an
image folder, a user's Dataset and a user's DataLoader each yield ``Batch(views, labels)``, the
labels those of the images the views were cut from. The online probe trains on them wherever it
reports; where no labels exist there is no probe, and a probe that never trained logs nothing."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY, online_probe_of
from PIL import Image
from torch.utils.data import DataLoader

from unigrad.config import build_config
from unigrad.data.datasets import MEAN, STD
from unigrad.data.pipeline import (
    Batch,
    CropData,
    FastData,
    GivenLoaderData,
    LoaderData,
    build_train_data,
    data_from_source,
)
from unigrad.data.sources import FolderSource, Source
from unigrad.data.user_data import DatasetSource
from unigrad.engine.callbacks import OnlineProbeMonitor
from unigrad.engine.parts import build_parts
from unigrad.engine.trainer import Trainer

CPU = torch.device("cpu")
#: recipe without colour changes: a view's mean colour still names its class
PLAIN = {"jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}
RUN = {"amp": "off", "knn_every": 0, "diag_every": 0, "log_every": 1, "workers": 0}
FIT = {"knn_baseline": False, "final_linear_epochs": 0}  # the final kNN alone


def colour_images(n_per_class: int, size: int = 16, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    """(uint8 [size, size, 3], label) with class k bright in channel k only (3 classes)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(3):
        for _ in range(n_per_class):
            img = rng.integers(0, 50, size=(size, size, 3))
            img[..., k] += 180
            out.append((img.astype("uint8"), k))
    return out


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny kernels: a second OpenMP thread on shared cores costs far more than it gives."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    """An ImageFolder of the three colour classes: ROOT/{train,val}/c<k>/<i>.png."""
    root = tmp_path_factory.mktemp("colours")
    for split, seed in (("train", 0), ("val", 1)):
        for i, (img, k) in enumerate(colour_images(16, seed=seed)):
            (root / split / f"c{k}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / split / f"c{k}" / f"{i}.png")
    return root


class Items(torch.utils.data.Dataset):
    """A user's Dataset: [3, H, W] uint8 tensors, with or without labels."""

    def __init__(self, labelled: bool) -> None:
        self.items = colour_images(8)
        self.labelled = labelled

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        img, k = self.items[i]
        x = torch.from_numpy(img).permute(2, 0, 1)
        return (x, k) if self.labelled else x


def _cfg(**over):
    return build_config(TINY, {"out": "unused", "batch_size": 8, **PLAIN, **RUN}, over)


def colour_class(views: list[torch.Tensor]) -> torch.Tensor:
    """[B] the class each image's first view shows: its brightest channel before normalising."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (views[0].float().cpu() * std + mean).mean((2, 3)).argmax(1)


def assert_labels_match(data, n_batches: int = 3) -> None:
    seen = 0
    for batch in data.epoch(0, 0):
        assert isinstance(batch, Batch) and batch.labels is not None
        assert batch.labels.dtype == torch.int64 and batch.labels.shape == (8,)
        assert torch.equal(batch.labels.cpu(), colour_class(batch.views))
        assert len(set(batch.labels.tolist())) > 1  # shuffled: a mismatch would show
        seen += 1
        if seen == n_batches:
            break
    assert seen == n_batches


@pytest.mark.parametrize("pipeline", ["fast", "standard"])
def test_folder_batches_carry_their_images_labels(colours, pipeline):
    run = data_from_source(_cfg(), CPU, FolderSource(str(colours)), pipeline=pipeline)
    assert isinstance(run.train, FastData if pipeline == "fast" else CropData)
    assert run.train.labelled and run.train.num_classes == 3
    assert_labels_match(run.train)


class PilSplits(Source):
    """A source whose splits are Datasets of (PIL image, label) with ``classes``, as
    torchvision's CIFAR-10 (:class:`~unigrad.data.sources.TorchvisionSource`) opens them."""

    class Split(torch.utils.data.Dataset):
        def __init__(self, seed: int) -> None:
            self.items = colour_images(8, seed=seed)
            self.classes = ["red", "green", "blue"]

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i: int):
            img, k = self.items[i]
            return Image.fromarray(img), k

    def splits(self):
        return ("train", "val")

    def open(self, split, transform=None):
        assert transform is None
        return self.Split(seed=0 if split == "train" else 1)


def test_a_datasets_source_carries_its_labels_through_the_standard_pipeline():
    run = data_from_source(_cfg(), CPU, PilSplits(), pipeline="standard")
    assert isinstance(run.train, LoaderData) and run.train.num_classes == 3
    assert_labels_match(run.train)


def test_a_users_dataset_and_loader_carry_their_labels():
    run = build_train_data(_cfg(), CPU, train_data=Items(labelled=True))
    assert isinstance(run.train, LoaderData) and run.train.labelled
    assert_labels_match(run.train)

    def batches(ds):  # ready views and their labels, as a user's loader yields them
        x = torch.stack([ds[i][0] for i in range(len(ds))]).float() / 255
        views = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        y = torch.tensor([ds[i][1] for i in range(len(ds))])
        perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
        return [([views[p], views[p]], y[p]) for p in perm.split(8)]

    given = GivenLoaderData(_cfg(), CPU, DataLoader(batches(Items(True)), batch_size=None))
    assert given.labelled
    assert_labels_match(given)


def test_no_labels_noonline_probe_of():
    """Unlabelled items: batches without labels and no probe, even beside a labelled eval split
    (a source that says its training split is unlabelled)."""
    run = build_train_data(_cfg(), CPU, train_data=Items(labelled=False))
    assert not run.train.labelled and run.train.num_classes is None
    batch = next(run.train.epoch(0, 0))
    assert batch.labels is None and len(batch.views) == 2
    mixed = DatasetSource({"train": Items(False), "val": Items(True)})
    run = data_from_source(_cfg(), CPU, mixed, pipeline="standard", splits=("train", "val"))
    assert run.eval is not None and run.train.num_classes is None
    parts = build_parts(_cfg(), CPU, run.train, 4)
    run_like = SimpleNamespace(cfg=_cfg(), data=run.train, model=parts.model, device=CPU)
    assert OnlineProbeMonitor.for_run(run_like) is None  # the probe is built for labels only

    given = GivenLoaderData(
        _cfg(), CPU, DataLoader([[torch.zeros(8, 3, 16, 16)] * 2] * 2, batch_size=None)
    )
    assert not given.labelled and next(given.epoch(0, 0)).labels is None


def _metrics(out: Path) -> dict[tuple[int, str], float]:
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    return {(int(r[0]), r[2]): float(r[3]) for r in rows}


def _train(folder: Path, out: Path, steps: int, prepare=None) -> Trainer:
    cfg = build_config(
        TINY,
        {"data": str(folder), "out": str(out), "batch_size": 8, **RUN},
        {"pipeline": "standard", "max_steps": steps, "epochs": 10, **FIT},
    )
    tr = Trainer(cfg, show_progress=False)
    if prepare is not None:
        prepare(tr)
    tr.fit()
    return tr


def test_the_probe_learns_on_the_folder_path(colours, tmp_path):
    """The standard pipeline on an image folder, end to end: the probe trains on the batches'
    labels and its accuracy on val rises well above chance (33%) within 12 steps (2 epochs).
    Before the labels travelled with the batch it never trained and logged exactly chance."""
    tr = _train(colours, tmp_path / "run", 12)
    assert isinstance(tr.data, CropData) and online_probe_of(tr) is not None
    assert online_probe_of(tr).trained
    logged = _metrics(tmp_path / "run")
    top1 = [v for (_, name), v in sorted(logged.items()) if name == "probe/linear_top1"]
    assert len(top1) == 2 and top1[-1] >= 60, top1


def test_a_probe_that_never_trained_logs_no_number(colours, tmp_path):
    """Labels withheld from the batches (data that has none): the probe gets nothing to train
    on, and no ``probe/`` metric appears where an untrained probe would read as chance."""

    def withhold_labels(tr: Trainer) -> None:
        tr.data.labelled = False

    tr = _train(colours, tmp_path / "run", 6, withhold_labels)
    assert online_probe_of(tr) is not None and not online_probe_of(tr).trained
    logged = _metrics(tmp_path / "run")
    assert logged and not any(name.startswith("probe/") for _, name in logged)
