"""Outputs that cannot be written (issue 45 items 6, 7): a full disk during a checkpoint write,
unwritable ``--out`` paths of pretrain, export and report. One line naming the path and the fix,
no traceback, no temporary file left behind."""

import builtins
import errno

import pytest
import torch
import yaml
from conftest import TINY
from test_export import make_checkpoint
from test_report import make_run

from unigrad.cli import main
from unigrad.engine import files
from unigrad.engine.checkpoint import load_checkpoint, save_checkpoint
from unigrad.errors import UserError


def failing_open(monkeypatch, err: int, after: int = 0) -> None:
    """Make the atomic writes fail with ``err``: the file is opened, ``after`` bytes are written,
    then the write raises (a disk that fills up mid-write); ``after < 0``: the open raises."""

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(bytes(memoryview(data)[:after]))
            self.f.flush()
            raise OSError(err, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    def fake_open(path, mode="r", *args, **kwargs):
        if after < 0:
            raise OSError(err, "Read-only file system", str(path))
        return Full(builtins.open(path, mode, *args, **kwargs))

    monkeypatch.setattr(files, "open", fake_open, raising=False)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_full_disk_during_a_checkpoint_write_names_the_space_and_removes_the_temp_file(
    tmp_path, monkeypatch
):
    path = tmp_path / "last.ckpt"
    save_checkpoint({"w": torch.ones(3)}, path)
    failing_open(monkeypatch, errno.ENOSPC, after=100)
    with pytest.raises(UserError) as e:
        save_checkpoint({"w": torch.zeros(1000)}, path)
    msg = str(e.value)
    assert "no space left" in msg and str(path) in msg and "needs" in msg and "MiB" in msg
    assert leftovers(tmp_path) == []  # the partial file does not keep the disk full
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))  # the good one is untouched


def test_full_disk_in_pretrain_is_one_line_and_says_how_to_continue(
    tmp_path, monkeypatch, capsys, tiny_folder
):
    cfg = tmp_path / "tiny.yaml"
    fast = {"max_steps": 1, "ckpt_every": 1, "amp": "off", "online_probe": False}
    cfg.write_text(yaml.safe_dump({**TINY, **fast}))
    failing_open(monkeypatch, errno.ENOSPC, after=10)
    run = tmp_path / "run"
    args = ["pretrain", "--config", str(cfg), "--data", str(tiny_folder), "--out", str(run)]
    assert main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no space left" in err and "--resume" in err
    assert leftovers(run) == []


def test_export_to_a_read_only_location_is_one_line(tmp_path, monkeypatch, capsys):
    ckpt = make_checkpoint(tmp_path / "t.ckpt", backbone="resnet18", width=0.125, cifar_stem=True)
    failing_open(monkeypatch, errno.EROFS, after=-1)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "b.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Read-only file system" in err and "--out" in err
    assert "b.pth" in err and leftovers(tmp_path) == []


def test_unwritable_out_paths_are_refused_before_any_work(tmp_path, capsys, tiny_folder):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    ckpt = make_checkpoint(tmp_path / "t.ckpt", backbone="resnet18", width=0.125, cifar_stem=True)
    run = make_run(tmp_path / "r", "byol", steps=2)
    commands = [
        ["export", str(ckpt), "--out", str(blocker / "b.pth")],
        ["report", str(run), "--out", str(blocker / "report")],
        ["pretrain", "--data", str(tiny_folder), "--out", str(blocker / "run"), "--quiet"],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"{blocker} is a file, not a folder; choose another --out" in err


def test_full_disk_while_logging_metrics_is_one_line(tmp_path, monkeypatch):
    from unigrad.engine import runlog

    log = runlog.RunLog(tmp_path, tensorboard=False)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runlog, "open", full, raising=False)
    with pytest.raises(UserError, match=r"no space left .*metrics\.csv.*--resume"):
        log.log(1, 0.1, {"loss": 1.0})
