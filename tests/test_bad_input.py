"""Bad input through the CLI: one clear line naming the problem and the fix, no traceback."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY, make_image_folder

from unigrad.cli import main
from unigrad.engine.checkpoint import load_checkpoint


def pretrain(capsys, tmp_path, *args, cfg=None):
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump({**TINY, "max_steps": 2, **(cfg or {})}))
    code = main(["pretrain", "--config", str(cfg_file), "--quiet", *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.fixture
def folder(tmp_path):
    return make_image_folder(tmp_path / "data", per_class=6)


def out(tmp_path, name="run"):
    return ["--out", str(tmp_path / name)]


def test_missing_data_dir(capsys, tmp_path):
    code, err = pretrain(capsys, tmp_path, "--data", str(tmp_path / "nope"), *out(tmp_path))
    assert code == 2 and "does not exist" in err and "--data" in err


def test_missing_split(capsys, tmp_path, folder):
    shutil.rmtree(folder / "train")
    code, err = pretrain(capsys, tmp_path, "--data", str(folder), *out(tmp_path))
    assert code == 2 and "train" in err and "val" in err


def test_class_folder_without_images(capsys, tmp_path, folder):
    (folder / "train" / "empty_class").mkdir()
    code, err = pretrain(capsys, tmp_path, "--data", str(folder), *out(tmp_path))
    assert code == 2 and "empty_class" in err


def _corrupt(folder: Path) -> Path:
    bad = folder / "train" / "c0" / "broken.jpg"
    good = folder / "train" / "c0" / "0.png"
    from PIL import Image

    Image.open(good).convert("RGB").save(bad, quality=90)
    bad.write_bytes(bad.read_bytes()[:60])
    return bad


def test_corrupt_jpeg_fails_naming_the_file(capsys, tmp_path, folder):
    bad = _corrupt(folder)
    code, err = pretrain(
        capsys, tmp_path, "--data", str(folder), *out(tmp_path), cfg={"bad_images": "fail"}
    )
    assert code == 2 and bad.name in err


def test_corrupt_jpeg_is_skipped_with_a_warning_and_counted(capsys, tmp_path, folder):
    bad = _corrupt(folder)
    with pytest.warns(UserWarning, match=bad.name):
        code, err = pretrain(
            capsys, tmp_path, "--data", str(folder), *out(tmp_path), cfg={"bad_images": "skip"}
        )
    assert code == 0 and "1 unreadable training images skipped" in err
    assert "0,0.0000,data/skipped_images,1" in (tmp_path / "run" / "metrics.csv").read_text()


def test_non_rgb_images_are_converted(capsys, tmp_path, folder):
    from PIL import Image

    for i, mode in enumerate(("L", "P", "RGBA")):
        Image.new(mode, (16, 16)).save(folder / "train" / "c1" / f"mode{i}.png")
    code, _ = pretrain(capsys, tmp_path, "--data", str(folder), *out(tmp_path))
    assert code == 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["--method", "sawv"], "unknown method 'sawv'"),
        (["--set", "lamda=1"], "Valid keys:"),
        (["--set", "lambd=-1"], "lambd must be >= 0"),
        (["--set", "tau=0", "--method", "moco"], "tau must be > 0"),
        (["--set", "rho=1.5"], "rho must be in [0, 1)"),
        (["--batch-size", "1"], "batch_size must be >= 2"),
        (["--method", "byol", "--form", "grad"], "no gradient form"),
    ],
)
def test_invalid_settings(capsys, tmp_path, folder, args, message):
    code, err = pretrain(capsys, tmp_path, "--data", str(folder), *out(tmp_path), *args)
    assert code == 2 and message in err and err.count("\n") == 1


def test_batch_not_divisible_by_world_size(tmp_path, folder, monkeypatch):
    from unigrad.config import build_config
    from unigrad.core import dist
    from unigrad.engine.trainer import Trainer
    from unigrad.errors import UserError

    monkeypatch.setattr(dist, "world_size", lambda: 3)
    cfg = build_config(TINY, {"data": str(folder), "out": str(tmp_path / "r")})
    with pytest.raises(UserError, match="not divisible by the world size 3"):
        Trainer(cfg, show_progress=False)


def test_resume_with_another_method_or_architecture(capsys, tmp_path, folder):
    assert pretrain(capsys, tmp_path, "--data", str(folder), *out(tmp_path))[0] == 0
    code, err = pretrain(
        capsys,
        tmp_path,
        "--data",
        str(folder),
        *out(tmp_path),
        "--resume",
        "--method",
        "simclr",
        "--width",
        "0.25",
    )
    assert code == 2 and "different run" in err and "method" in err and "width" in err


def test_existing_run_is_not_overwritten(capsys, tmp_path, folder):
    assert pretrain(capsys, tmp_path, "--data", str(folder), *out(tmp_path))[0] == 0
    code, err = pretrain(capsys, tmp_path, "--data", str(folder), *out(tmp_path))
    assert code == 2 and "--resume" in err


def test_non_finite_loss_stops_with_step_and_last_good_checkpoint(capsys, tmp_path, folder):
    code, err = pretrain(
        capsys,
        tmp_path,
        "--data",
        str(folder),
        *out(tmp_path),
        cfg={"lambd": 1e39, "max_steps": 6, "log_every": 1, "ckpt_every": 1, "amp": "off"},
    )
    assert code == 3 and "non-finite" in err and "at step" in err and "checkpoint" in err


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path, folder):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({**TINY, "epochs": 200, "data": str(folder)}))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [
        sys.executable,
        "-m",
        "unigrad",
        "pretrain",
        "--config",
        str(cfg_file),
        "--out",
        str(run),
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (run / "last.ckpt").exists():
        time.sleep(0.05)
        assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "Traceback" not in stderr and "--resume" in stdout
    assert load_checkpoint(run / "last.ckpt")["step"] > 0
