"""Unreadable images met in DataLoader workers (issue 45 item 8): ``bad_images=fail`` ends in
the one-line message, not the worker's traceback; ``skip`` counts every file (in
``data/skipped_images``) and warns once per file, however many workers met it."""

import warnings

import pytest
import yaml
from conftest import TINY, make_image_folder
from torch.utils.data import DataLoader

from unigrad.cli import main
from unigrad.data.datasets import SafeImageFolder
from unigrad.errors import UserError


@pytest.fixture
def bad_folder(tmp_path):
    root = make_image_folder(tmp_path / "data", splits=("train",), per_class=6)  # no evaluation
    for k in range(2):  # two truncated files in two classes
        good = root / "train" / f"c{k}" / "0.png"
        (root / "train" / f"c{k}" / "bad.png").write_bytes(good.read_bytes()[:60])
    return root


def test_a_worker_reports_unreadable_files_once_each_and_the_count_is_kept(bad_folder):
    ds = SafeImageFolder(str(bad_folder / "train"), transform=lambda im: 0)
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # two passes: each worker meets the files again
            list(loader)
        assert ds.n_skipped == 2
    skipped = [str(w.message) for w in caught if "skipping unreadable image" in str(w.message)]
    assert len(skipped) == 2 and all("bad.png" in m for m in skipped)


def test_a_worker_refusing_an_unreadable_file_gives_the_message_only(bad_folder):
    ds = SafeImageFolder(str(bad_folder / "train"), bad_images="fail")
    with pytest.raises(UserError) as e:
        list(DataLoader(ds, batch_size=4, num_workers=1, collate_fn=lambda b: b))
    assert str(e.value).startswith("cannot decode image ") and "bad.png" in str(e.value)
    assert "Traceback" not in str(e.value) and "\n" not in str(e.value)


def pretrain(tmp_path, folder, capsys, bad_images):
    cfg = {**TINY, "pipeline": "standard", "workers": 2, "amp": "off", "online_probe": False}
    cfg |= {"bad_images": bad_images, "epochs": 1, "log_every": 1, "diag_every": 0, "knn_every": 0}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / f"run-{bad_images}"
    args = ["--config", str(tmp_path / "c.yaml"), "--data", str(folder), "--out", str(out)]
    code = main(["pretrain", *args, "--quiet"])
    return code, capsys.readouterr().err, out


def test_folder_pipeline_fail_is_one_line(tmp_path, bad_folder, capsys):
    code, err, _ = pretrain(tmp_path, bad_folder, capsys, "fail")
    assert code == 2 and err.startswith("error: cannot decode image ") and "bad.png" in err
    assert "Traceback" not in err and "worker" not in err


def test_folder_pipeline_skip_logs_the_real_count(tmp_path, bad_folder, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, err, out = pretrain(tmp_path, bad_folder, capsys, "skip")
    assert code == 0, err
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()]
    counts = [float(r[3]) for r in rows if r[2] == "data/skipped_images"]
    assert counts[-1] > 0  # the files are met by the workers as the epochs reach them
    skipped = [str(w.message) for w in caught if "skipping unreadable image" in str(w.message)]
    assert len(skipped) == len(set(skipped)) == counts[-1]
