"""One evaluation protocol (unigrad.eval.protocol) for the trainer and the CLI; the grid runner
and the Table 2 row label (unigrad.experiments)."""

import json
from pathlib import Path

import conftest
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from unigrad.cli import main
from unigrad.config import build_config, to_dict
from unigrad.data.evaluation import eval_transform
from unigrad.data.sources import FolderSource
from unigrad.engine.checkpoint import save_checkpoint
from unigrad.errors import UserError
from unigrad.eval.features import extract_features, load_backbone
from unigrad.eval.protocol import (
    check_semisup_request,
    evaluate_features,
    linear_scores,
    random_init_backbone,
    semisup_epochs,
    semisup_subset,
)
from unigrad.experiments import grid as C
from unigrad.experiments.rows import row_label
from unigrad.experiments.runner import last_diagnostics, select_runs
from unigrad.methods import METHODS, get_method
from unigrad.models.networks import build_model

TINY = {**conftest.TINY, "method": "simclr"}


def tiny_checkpoint(path: Path) -> Path:
    keys = ("backbone", "width", "cifar_stem", "proj_depth", "proj_dim", "image_size")
    model = build_model(**{k: TINY[k] for k in keys})
    save_checkpoint({"config": TINY, "model": model.state_dict(), "step": 0, "epoch": 0}, path)
    return path


def noisy_clusters(n: int, classes: int, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n)
    return F.one_hot(y, dim).float() + 0.8 * torch.randn(len(y), dim, generator=g), y


@pytest.fixture
def feats():
    fb, lb = noisy_clusters(20, 4, 16, seed=0)
    fq, lq = noisy_clusters(10, 4, 16, seed=1)
    return fb, lb, fq, lq


# ---------------------------------------------------------------- trainer side = CLI side


def test_cli_knn_and_linear_equal_evaluate_features_on_the_same_features(tmp_path, capsys):
    """What `unigrad knn` / `unigrad linear` print for a checkpoint equals what the trainer
    logs (evaluate_features) for the same backbone's features."""
    data = conftest.make_image_folder(tmp_path / "data", classes=7, per_class=6)
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt")
    backbone, _ = load_backbone(ckpt)
    splits = []
    for split in ("train", "val"):
        ds = FolderSource(str(data)).open(split, eval_transform(16))
        splits += extract_features(backbone, DataLoader(ds, batch_size=256), "cpu")
    trainer = evaluate_features(*splits, k=5, t=0.1, linear_epochs=10, seed=1)
    assert set(trainer) == {"knn_top1", "knn_top5", "linear_top1", "linear_top5"}

    def cli(*args: str) -> dict:
        base = [str(ckpt), "--data", str(data), "--workers", "0", "--json", "--quiet"]
        assert main([*args[:1], *base, *args[1:]]) == 0
        return json.loads(capsys.readouterr().out)

    knn = cli("knn", "--k", "5", "--temperature", "0.1")
    lin = cli("linear", "--epochs", "10", "--seed", "1")
    assert (knn["top1"], knn["top5"]) == (trainer["knn_top1"], trainer["knn_top5"])
    assert (lin["top1"], lin["top5"]) == (trainer["linear_top1"], trainer["linear_top5"])


# ---------------------------------------------------------------- the protocol


def test_evaluate_features_knn_only_and_single_class(feats, capsys):
    fb, lb, fq, lq = feats
    assert set(evaluate_features(*feats, k=5, t=0.1, linear_epochs=0, seed=0)) == {
        "knn_top1",
        "knn_top5",
    }
    zeros = torch.zeros_like
    out = evaluate_features(
        fb, zeros(lb), fq, zeros(lq), k=5, t=0.1, linear_epochs=2, seed=0, eval_split="test"
    )
    assert out == {}
    err = capsys.readouterr().err
    assert "WARNING: kNN/linear evaluation skipped: the train and test splits hold 1 class" in err


def test_linear_scores_counts_and_device(feats):
    r = linear_scores(*feats, epochs=2, seed=0, device="cpu")
    assert (r["n_train"], r["n_eval"]) == (80, 40) and 0 <= r["top1"] <= r["top5"] <= 100
    assert linear_scores(*feats, epochs=2, seed=0) == r  # features already on the CPU


def test_random_init_backbone_is_seeded_and_leaves_the_rng_alone():
    record = to_dict(build_config(TINY, {"seed": 2}))
    state = torch.random.get_rng_state()
    a = random_init_backbone(record).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    b = random_init_backbone(record).state_dict()
    c = random_init_backbone({**record, "seed": 3}).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_random_init_backbone_of_a_custom_module_is_none(capsys):
    assert random_init_backbone({"backbone": "custom"}) is None
    assert "custom backbone cannot be rebuilt" in capsys.readouterr().err


def test_semisup_subset_and_epochs():
    labels = torch.arange(4).repeat_interleave(10)
    idx, frac = semisup_subset(labels, fraction=0.2, seed=0)
    assert frac == 0.2 and len(idx) == 8 and idx == sorted(idx)
    assert semisup_subset(labels, indices=[3, 1, 7]) == ([3, 1, 7], 3 / 40)
    assert (semisup_epochs(0.01), semisup_epochs(0.1)) == (60, 30)
    with pytest.raises(UserError, match="pass --fraction"):
        check_semisup_request(None, False)
    with pytest.raises(UserError, match="pass --fraction"):
        check_semisup_request(0.1, True)
    with pytest.raises(UserError, match=r"must be in \(0, 1\]"):
        semisup_subset(labels, fraction=0.0)
    with pytest.raises(UserError, match="has 1 image"):
        semisup_subset(labels, indices=[0])


# ---------------------------------------------------------------- experiments


def test_row_label_of_every_form():
    for spec in METHODS.values():
        for f in spec.all_forms():
            expected = f.row or ("-" if f.kind == "loss" else f.key)
            assert row_label(f) == expected
            marked = f.kind == "grad" and f.key == spec.default_grad
            assert row_label(f, spec) == expected + "*" * marked
    bt = get_method("barlow_twins")
    assert row_label(bt.form("grad", "f")) == "f" and row_label(bt.form("loss")) == "-"


def test_describe_uses_row_label(tmp_path):
    for spec, cfg in C.run_configs(C.load_grid("table2"), tmp_path, {}, {}):
        _, form, _ = C._resolved(cfg)
        assert C.describe(cfg)["row"] == row_label(form), spec.run_id


def test_select_runs_seeds_and_only(tmp_path):
    runs = select_runs("table2", tmp_path, data_args={}, extra={}, seeds=[7], only=["-s7"])
    assert runs and all(s.seed == 7 and s.run_id.endswith("-s7") for s, _ in runs)
    with pytest.raises(UserError, match="matches no run of grid table2"):
        select_runs("table2", tmp_path, data_args={}, extra={}, only=["nothing-like-this"])


def test_last_diagnostics_reads_the_last_values_and_mean_speed(tmp_path):
    rows = ["step,epoch,name,value"]
    rows += [f"{s},0,img_per_s,{v}" for s, v in ((1, 10), (2, 100), (3, 200))]
    rows += ["1,0,pos_sim,0.1", "3,0,pos_sim,0.5"]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    d = last_diagnostics(tmp_path)
    assert d["pos_sim"] == 0.5 and d["img_per_s"] == 200 and d["img_per_s_mean"] == 150.0


def test_compare_dry_run_lists_the_rows(tmp_path, capsys):
    out = tmp_path / "g"
    assert (
        main(["compare", "--grid", "table2", "--out", str(out), "--dry-run", "--seeds", "0"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    runs = select_runs("table2", out, data_args={}, extra={}, seeds=[0])
    assert len(lines) == len(runs) and not out.exists()
    for line, (spec, cfg) in zip(lines, runs, strict=True):
        d = C.describe(cfg)
        assert line.split()[:4] == [spec.run_id, d["method"], d["form"], d["row"]]
