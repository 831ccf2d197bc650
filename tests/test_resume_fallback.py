"""A resume that fell back past an unreadable ``last.ckpt`` (issue 45 item 9): the bad file is
set aside and ``last.ckpt`` loads again, for export, kNN and the next resume (no new warning)."""

import shutil

import yaml
from conftest import TINY, make_image_folder

from unigrad.cli import main
from unigrad.engine.checkpoint import load_checkpoint


def test_a_corrupt_last_checkpoint_is_set_aside_after_the_fallback(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", splits=("train",), per_class=6)  # no evaluation
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "amp": "off", "online_probe": False, "diag_every": 0}))
    run = tmp_path / "run"
    args = ["pretrain", "--config", str(cfg), "--data", str(data), "--out", str(run), "--quiet"]
    assert main(args) == 0
    last = run / "last.ckpt"
    shutil.copy(last, run / "last.prev.ckpt")  # a finished run: both hold the last step
    last.write_bytes(last.read_bytes()[:1000])  # cut short
    capsys.readouterr()

    assert main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "skipping" in err and "last.ckpt.corrupt" in err
    assert (run / "last.ckpt.corrupt").is_file()
    assert load_checkpoint(last)["step"] == load_checkpoint(run / "last.prev.ckpt")["step"]
    assert main(["export", str(last), "--out", str(tmp_path / "b.pth")]) == 0
    capsys.readouterr()

    assert main([*args, "--resume"]) == 0
    assert "skipping" not in capsys.readouterr().err  # the warning is not repeated
