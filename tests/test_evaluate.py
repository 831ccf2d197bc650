import json
import math
from pathlib import Path

import conftest
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from unigrad.cli import main
from unigrad.engine import checkpoint
from unigrad.engine.checkpoint import save_checkpoint
from unigrad.errors import UserError
from unigrad.eval.features import (
    extract_features,
    knn_eval,
    knn_predict_scores,
    load_backbone,
)
from unigrad.eval.linear import class_balanced_subset, fold_standardization, train_linear
from unigrad.models.networks import build_model

TINY = {**conftest.TINY, "method": "simclr"}


def tiny_checkpoint(path: Path, predictor: bool = False, **overrides) -> Path:
    cfg = {**TINY, **overrides}
    keys = ("backbone", "width", "cifar_stem", "proj_depth", "proj_dim", "image_size")
    model = build_model(**{k: cfg[k] for k in keys}, predictor=predictor)
    save_checkpoint({"config": cfg, "model": model.state_dict(), "step": 0, "epoch": 0}, path)
    return path


def clusters(n_per_class: int, classes: int, dim: int, noise: float, seed: int):
    """Points around orthogonal class centres e_c: [n, dim], labels [n]."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    feats = F.one_hot(labels, dim).float() + noise * torch.randn(len(labels), dim, generator=g)
    return feats, labels


# ---------------------------------------------------------------- kNN


def test_knn_separable_clusters_score_expected_accuracy():
    bank, bank_y = clusters(20, 3, 8, 0.05, seed=0)
    q, q_y = clusters(10, 3, 8, 0.05, seed=1)
    q[:2] = q[20:22]  # two class-0 queries sit in the class-2 cluster: they must be wrong
    r = knn_eval(bank, bank_y, q, q_y, k=10, t=0.1)
    assert r["top1"] == pytest.approx(100 * 28 / 30)
    assert r["top5"] == 100.0  # 3 classes: top-5 is top-3
    assert (r["k"], r["n_train"], r["n_eval"]) == (10, 60, 30)


def test_knn_one_hot_features_are_perfect():
    labels = torch.arange(10).repeat(5)
    feats = F.one_hot(labels, 10).float()
    r = knn_eval(feats, labels, feats[:17], labels[:17], k=200, t=0.1)
    assert r["top1"] == 100.0


def test_knn_k_larger_than_bank_is_clamped():
    bank, bank_y = clusters(2, 2, 4, 0.01, seed=0)
    r = knn_eval(bank, bank_y, bank, bank_y, k=200, t=0.1)
    assert r["k"] == 4
    assert r["top1"] == 100.0


def test_knn_weights_are_exp_similarity_over_temperature():
    # query e_x; class 0: one neighbour at cos 0.9, class 1: two neighbours at cos 0.5
    s = math.sqrt(0.75)
    bank = torch.tensor([[0.9, math.sqrt(1 - 0.81)], [0.5, s], [0.5, -s]])
    bank_y = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.0]])
    for t in (0.1, 1.0, 10.0):
        scores = knn_predict_scores(bank, bank_y, q, k=3, t=t, num_classes=2)[0]
        expected = torch.tensor([math.exp(0.9 / t), 2 * math.exp(0.5 / t)])
        torch.testing.assert_close(scores / scores.sum(), expected / expected.sum())
    # sharp weights follow the nearest neighbour, flat ones the majority
    assert knn_eval(bank, bank_y, q, torch.tensor([0]), k=3, t=0.1)["top1"] == 100.0
    assert knn_eval(bank, bank_y, q, torch.tensor([0]), k=3, t=10.0)["top1"] == 0.0


def test_knn_chunking_does_not_change_the_result():
    bank, bank_y = clusters(30, 4, 6, 0.8, seed=2)
    q, q_y = clusters(25, 4, 6, 0.8, seed=3)
    full = knn_eval(bank, bank_y, q, q_y, k=7, t=0.2)
    assert knn_eval(bank, bank_y, q, q_y, k=7, t=0.2, chunk_size=3) == full
    assert 0 < full["top1"] < 100  # a noisy set, so the comparison means something


def test_extract_features_shapes_and_restores_train_mode():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.BatchNorm1d(5)).train()
    data = [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 3])) for _ in range(3)]
    feats, labels = extract_features(net, data, "cpu", channels_last=False)
    assert feats.shape == (12, 5) and feats.dtype == torch.float32
    assert labels.tolist() == [0, 1, 2, 3] * 3
    assert net.training
    # eval mode was used: BN running stats untouched
    assert torch.equal(net[2].running_mean, torch.zeros(5))
    assert extract_features(net, data, "cpu", max_batches=1)[0].shape == (4, 5)


# ---------------------------------------------------------------- linear probe, subsets


def test_linear_probe_learns_separable_features_at_any_scale():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 16, generator=g)
    w = torch.randn(16, 4, generator=g)
    y = (x @ w).argmax(1)
    x = x * torch.logspace(-2, 3, 16) + 100.0  # wildly different channel scales and offsets
    head = train_linear(x[:500], y[:500], 4, epochs=30, batch_size=64, progress=False)
    acc = (head(x[500:]).argmax(1) == y[500:]).float().mean()
    assert acc >= 0.9


def test_fold_standardization_is_exact():
    head = nn.Linear(6, 3)
    mean, std = torch.randn(6), torch.rand(6) + 0.5
    x = torch.randn(10, 6)
    folded = fold_standardization(head, mean, std)
    torch.testing.assert_close(folded(x), head((x - mean) / std))


def test_class_balanced_subset_is_balanced_and_seeded():
    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 3)
    idx = class_balanced_subset(labels, 0.1, seed=0)
    counts = torch.bincount(labels[idx], minlength=3).tolist()
    assert counts == [10, 5, 1]  # at least one per class
    assert idx == sorted(set(idx))
    assert class_balanced_subset(labels, 0.1, seed=0) == idx
    assert class_balanced_subset(labels, 0.1, seed=1) != idx
    assert len(class_balanced_subset(labels, 1.0)) == len(labels)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(UserError, match="fraction"):
            class_balanced_subset(labels, bad)


# ---------------------------------------------------------------- checkpoints


def test_load_backbone_builds_the_configured_network(tmp_path):
    path = tiny_checkpoint(tmp_path / "a.ckpt", predictor=True, method="byol")
    backbone, cfg = load_backbone(path)
    assert not backbone.training
    assert cfg["width"] == 0.125 and cfg["proj_dim"] == 32
    assert backbone(torch.randn(2, 3, 16, 16)).shape == (2, 64)  # 512 channels x width 0.125
    saved = checkpoint.load_checkpoint(path)["model"]
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, saved[f"encoder.backbone.{k}"])


def test_load_backbone_refuses_weights_of_another_architecture(tmp_path):
    model = build_model("resnet18", width=0.25, cifar_stem=True, proj_dim=32, proj_depth=2)
    bad = tmp_path / "bad.ckpt"
    save_checkpoint({"config": TINY, "model": model.state_dict()}, bad)
    with pytest.raises(UserError, match=r"bad\.ckpt.*do not match.*shape"):
        load_backbone(bad)
    state = build_model("resnet18", width=0.125, cifar_stem=True, proj_dim=32).state_dict()
    save_checkpoint({"config": TINY, "model": state}, bad)  # 3-layer projector, config says 2
    with pytest.raises(UserError, match=r"unexpected encoder\.projector"):
        load_backbone(bad)
    save_checkpoint({"weights": state}, bad)
    with pytest.raises(UserError, match="no 'config' and 'model'"):
        load_backbone(bad)
    with pytest.raises(UserError, match="does not exist"):
        load_backbone(tmp_path / "missing.ckpt")


# ---------------------------------------------------------------- CLI end to end


@pytest.fixture
def folder(tmp_path):
    """ImageFolder with 3 classes of coloured 16 px PNGs: train 6 per class, val 3."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for c, colour in enumerate(((200, 30, 30), (30, 200, 30), (30, 30, 200))):
            d = tmp_path / "data" / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                px = np.clip(np.array(colour) + rng.normal(0, 20, (16, 16, 3)), 0, 255)
                Image.fromarray(px.astype(np.uint8)).save(d / f"{i}.png")
    return tmp_path / "data"


def run_json(capsys, *args: str) -> dict:
    assert main([*args, "--json", "--workers", "0", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_knn_json(tmp_path, folder, capsys):
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt")
    r = run_json(capsys, "knn", str(ckpt), "--data", str(folder), "--k", "500")
    assert set(r) == {"top1", "top5", "k", "n_train", "n_eval"}
    assert (r["k"], r["n_train"], r["n_eval"]) == (18, 18, 9)
    assert 0 <= r["top1"] <= 100 and r["top5"] == 100.0
    assert main(["knn", str(ckpt), "--data", str(folder), "--workers", "0", "--k", "500"]) == 0
    captured = capsys.readouterr()
    assert "top-1" in captured.out and "used k=18" in captured.err


def test_cli_linear_json_fast_and_augmented(tmp_path, folder, capsys):
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt")
    base = ("linear", str(ckpt), "--data", str(folder), "--epochs", "3", "--batch-size", "8")
    r = run_json(capsys, *base)
    assert {"top1", "top5", "n_train", "n_eval"} <= set(r) and r["augment"] is False
    assert (r["n_train"], r["n_eval"]) == (18, 9)
    r = run_json(capsys, *base, "--augment")
    assert r["augment"] is True and 0 <= r["top1"] <= 100


def test_cli_semisup_saves_subset_and_result(tmp_path, folder, capsys):
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt")
    out = tmp_path / "sub.json"
    args = ("semisup", str(ckpt), "--data", str(folder), "--epochs", "1", "--out", str(out))
    r = run_json(capsys, *args, "--fraction", "0.5")
    assert (r["n_train"], r["n_eval"], r["fraction"]) == (9, 9, 0.5)
    saved = json.loads(out.read_text())
    assert len(saved["indices"]) == 9 and saved["result"]["top1"] == r["top1"]
    assert all(f.startswith("class") for f in saved["files"])
    # 9 images in batches of 8 would leave a batch of 1, which BN in train mode refuses
    again = run_json(capsys, *args, "--indices", str(out), "--batch-size", "8")
    assert again["n_train"] == 9


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fraction", "1.5"], "--fraction must be in (0, 1]"),
        ([], "pass --fraction"),
        (["--fraction", "0.5", "--split", "test"], "split 'test' not found"),
    ],
)
def test_cli_semisup_bad_input_is_one_line(tmp_path, folder, capsys, extra, message):
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt")
    assert main(["semisup", str(ckpt), "--data", str(folder), "--workers", "0", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_refuses_missing_checkpoint_and_unnamed_data(tmp_path, folder, capsys):
    assert main(["knn", str(tmp_path / "nope.ckpt"), "--data", str(folder)]) == 2
    assert "does not exist" in capsys.readouterr().err
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt")
    assert main(["knn", str(ckpt)]) == 2
    assert "pass --data DIR" in capsys.readouterr().err
