"""Data sources (unigrad.data.sources), the training stream apart from the evaluation splits,
and one evaluation view for the trainer and the CLI (issue 33, item 3)."""

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY, make_image_folder
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from unigrad.cli import build_parser, main
from unigrad.cli.evaluate import Session
from unigrad.config import build_config
from unigrad.data import sources as S
from unigrad.data.evaluation import EvalData
from unigrad.data.pipeline import FastData, LoaderData, build_train_data
from unigrad.engine.trainer import Trainer
from unigrad.errors import UserError

QUIET = {"amp": "off", "device": "cpu", "workers": 0, "knn_every": 0, "diag_every": 0}


class ColourSplit(Dataset):
    """n 16-px images per class of 3 class colours, RGB PIL (or ``transform(img)``)."""

    def __init__(self, n: int, seed: int, transform=None) -> None:
        colours = np.random.default_rng(0).integers(0, 256, (3, 1, 1, 3))
        self.labels = [c for c in range(3) for _ in range(n)]
        noise = np.random.default_rng(seed).integers(-40, 40, (len(self.labels), 16, 16, 3))
        self.pixels = np.clip(colours[self.labels] + noise, 0, 255).astype(np.uint8)
        self.transform, self.classes = transform, ["red", "green", "blue"]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.pixels[i])
        return (img if self.transform is None else self.transform(img)), self.labels[i]


class MemorySource(S.Source):
    """A user's source: ``data: "memory:<seed>"``, splits made up in memory."""

    kind = "memory"

    def __init__(self, location: str) -> None:
        self.seed = int(location)

    def splits(self):
        return ("train", "val")

    def open(self, split, transform=None):
        if split not in self.splits():
            raise UserError(f"no split {split!r}")
        return ColourSplit(6 if split == "train" else 3, self.seed + (split == "val"), transform)


@pytest.fixture
def registry(monkeypatch):
    """A registry of this test's own, so a test's sources do not outlive it."""
    monkeypatch.setattr(S, "SOURCES", dict(S.SOURCES))
    return S.SOURCES


@pytest.mark.parametrize("pipeline", ["auto", "standard"])
def test_a_source_registered_from_user_code_trains_and_evaluates(tmp_path, registry, pipeline):
    S.register_source(MemorySource)
    over = {"data": "memory:7", "out": str(tmp_path / "run"), "image_size": None}
    cfg = build_config(TINY, QUIET, {"batch_size": 6, "max_steps": 2, "pipeline": pipeline}, over)
    tr = Trainer(cfg, show_progress=False)
    assert isinstance(tr.data, FastData if pipeline == "auto" else LoaderData)
    assert tr.cfg.image_size == 16 and cfg.image_size is None  # from the source's images
    final = tr.fit()
    assert tr.step == 2 and {"knn_top1", "knn_top5"} <= set(final)
    assert tr.eval_data.features(tr.model.encoder.backbone, "cpu")[2].shape[0] == 9


def test_registry_asks_the_newest_kind_first_and_checks_what_it_registers(tmp_path, registry):
    folder = make_image_folder(tmp_path / "d", splits=("train",), classes=2, per_class=2)
    asked = SimpleNamespace(data=str(folder), dataset=None)
    assert type(S.source_from_config(asked)) is S.FolderSource

    @S.register_source
    class Everything(MemorySource):
        kind = "everything"

        @classmethod
        def from_config(cls, cfg, root="data"):
            return cls("0")  # takes over any data, a built-in source's too

    assert type(S.source_from_config(asked)) is Everything
    with pytest.raises(TypeError, match="kind"):
        S.register_source(type("NoKind", (S.Source,), {}))
    del registry["everything"]
    unknown = SimpleNamespace(data="stream:/nowhere", dataset=None)
    with pytest.raises(UserError, match="stream:/nowhere does not exist"):
        S.source_from_config(unknown)  # an unregistered kind reads as a missing folder


def trainer_and_cli_features(tmp_path, size: int, pipeline: str, capsys):
    """The trainer's evaluation features after a 1-step run on a ``size``-px folder, the CLI's
    for the checkpoint it wrote, and the two kNN results."""
    data = make_image_folder(tmp_path / "data", classes=3, per_class=6, size=size)
    out = tmp_path / "run"
    over = {"data": str(data), "out": str(out), "image_size": None, "pipeline": pipeline}
    # channels_last off: its CPU backward at 96 px, batch 6 corrupts the heap now and then
    over["channels_last"] = False  # (torch 2.14, this width-0.125 ResNet; evaluation unaffected)
    tr = Trainer(build_config(TINY, QUIET, {"batch_size": 6, "max_steps": 1}, over), False, False)
    final = tr.fit()
    ours = tr.eval_data.features(tr.model.encoder.backbone, "cpu")
    args = ["knn", str(out / "last.ckpt"), "--data", str(data), "--workers", "0", "--quiet"]
    s = Session(build_parser().parse_args(args))
    train, test, _ = s.splits()
    theirs = (*s.features(train), *s.features(test))
    assert main([*args, "--k", str(tr.cfg.knn_k), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out.splitlines()[-1])
    return ours, theirs, final, cli


@pytest.mark.parametrize("pipeline", ["fast", "standard"])
def test_trainer_knn_and_cli_knn_see_the_same_view_at_96px(tmp_path, capsys, pipeline):
    ours, theirs, final, cli = trainer_and_cli_features(tmp_path, 96, pipeline, capsys)
    assert ours[0].shape == (18, 64) and ours[2].shape == (18, 64)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert (cli["top1"], cli["top5"]) == (final["knn_top1"], final["knn_top5"])


def test_in_memory_view_is_the_per_image_view_at_small_sizes(tmp_path, capsys):
    """Up to 64 px the fast pipeline views its uint8 tensor whole: the same view as the CLI's
    per-image one, equal up to float rounding."""
    ours, theirs, _, _ = trainer_and_cli_features(tmp_path, 16, "fast", capsys)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-4)


def test_eval_data_views_memory_only_where_the_view_is_a_plain_resize(tmp_path):
    folder = make_image_folder(tmp_path / "d", classes=2, per_class=3, size=16)
    source = S.FolderSource(str(folder))
    memory = source.load_uint8("train")
    small = EvalData(source, 16, memory=memory).datasets()
    assert all(isinstance(ds, torch.utils.data.TensorDataset) for ds in small)
    assert torch.equal(small[0].tensors[1], memory.labels) and len(small[1]) == 6
    large = EvalData(source, 96, memory=memory).datasets()
    assert isinstance(large[0], S.SafeImageFolder) and large[0][0][0].shape == (3, 96, 96)


def test_the_config_given_is_not_changed(tmp_path, tiny_folder):
    over = {"data": str(tiny_folder), "image_size": None, "out": str(tmp_path / "run")}
    cfg = build_config(TINY, QUIET, over)
    before = copy.deepcopy(cfg)
    run = build_train_data(cfg, torch.device("cpu"))
    assert cfg == before and run.image_size == 16 and run.train.cfg.image_size == 16
    assert run.eval is not None and run.eval.image_size == 16
    tr = Trainer(cfg, show_progress=False)
    assert cfg == before and tr.cfg.image_size == 16
    views = [torch.randn(16, 3, 12, 12) for _ in range(2)]
    loader = DataLoader([(views, torch.zeros(16))] * 2, batch_size=None)
    given = build_config(TINY, QUIET, {"image_size": None})
    run = build_train_data(given, torch.device("cpu"), train_data=loader)
    assert given.image_size is None and run.image_size == 12 and run.eval is None
