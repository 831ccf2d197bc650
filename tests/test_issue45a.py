"""Issue 45, items 1-5: what gave silent wrong numbers (classes of the splits, --max-steps and
--resume, mixed image sizes, 16-bit PNGs) and the CPU segfault at width 0.125."""

import shutil

import pytest
import torch
import yaml
from conftest import TINY, make_image_folder

from unigrad.cli import main


def _tiny_config(tmp_path, **over):
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump({**TINY, "max_steps": 2, **over}))
    return str(cfg_file)


@pytest.fixture
def val_lacks_a_class(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=3, per_class=6)
    shutil.rmtree(root / "val" / "c1")
    return root


# --- item 1: train and eval classes --------------------------------------------------------


def test_pretrain_refuses_splits_with_different_classes(tmp_path, val_lacks_a_class, capsys):
    cfg = _tiny_config(tmp_path)
    args = ["--config", cfg, "--data", str(val_lacks_a_class), "--quiet"]
    code = main(["pretrain", *args, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "missing from val: c1" in err and "same class folders" in err
    assert not (tmp_path / "run" / "last.ckpt").exists()  # refused before training


def test_compare_refuses_splits_with_different_classes(tmp_path, val_lacks_a_class, capsys):
    (val_lacks_a_class / "val" / "c9").mkdir()  # and one class only val has
    shutil.copy(val_lacks_a_class / "val" / "c0" / "0.png", val_lacks_a_class / "val" / "c9")
    grid = {"name": "g", "base": {**TINY, "max_steps": 2}, "runs": [{"name": "u"}]}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    args = ["--grid", str(tmp_path / "g.yaml"), "--data", str(val_lacks_a_class), "--quiet"]
    code = main(["compare", *args, "--out", str(tmp_path / "grid")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "missing from val: c1; only in val: c9" in err


# --- item 5: 16-bit PNGs --------------------------------------------------------------------


def test_16_bit_png_keeps_its_grey_levels_in_both_pipelines(tmp_path):
    import numpy as np
    from PIL import Image

    from unigrad.data.sources import FolderSource

    levels = np.array([[0, 1, 64, 100], [128, 200, 254, 255]], dtype=np.uint16).repeat(2, 0)
    root = tmp_path / "data"
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
        Image.fromarray(levels * 257).save(root / "train" / c / "grey16.png")  # 0..65535
    assert Image.open(root / "train" / "a" / "grey16.png").mode.startswith("I;16")
    source = FolderSource(str(root))
    standard = np.asarray(source.open("train")[0][0])  # the PIL path: [H, W, 3]
    fast = source.load_uint8("train").images[0].permute(1, 2, 0).numpy()  # the in-memory path
    for rgb in (standard, fast):
        assert rgb.shape == (*levels.shape, 3)
        assert (rgb == levels[..., None]).all(), rgb[..., 0]


# --- item 4: in-memory split of mixed sizes -------------------------------------------------


def test_mixed_sizes_become_a_square_of_the_shorter_side_not_the_most_frequent_size(tmp_path):
    import numpy as np
    from PIL import Image

    from unigrad.data.sources import FolderSource

    d = tmp_path / "data" / "train" / "a"
    d.mkdir(parents=True)
    for i in range(3):  # the most frequent size: tall, 40 x 20 (H x W)
        Image.fromarray(np.full((40, 20, 3), 128, np.uint8)).save(d / f"tall{i}.png")
    Image.fromarray(np.full((30, 30, 3), 128, np.uint8)).save(d / "square.png")
    wide = np.full((20, 40, 3), 128, np.uint8)  # 20 x 40, red and blue stripes off its centre
    wide[:, 11:14] = (255, 0, 0)
    wide[:, 26:29] = (0, 0, 255)
    for i in range(2):
        Image.fromarray(wide).save(d / f"wide{i}.png")
    with pytest.warns(UserWarning, match="resized 6 of 6 images to the common size 20x20"):
        split = FolderSource(str(tmp_path / "data"), use_cache=False).load_uint8("train")
    assert split.images.shape == (6, 3, 20, 20)
    kept = split.images[-1]  # the wide image: shorter side 20, the centre 20 x 20 (half of it)
    assert torch.equal(kept, torch.from_numpy(wide[:, 10:30]).permute(2, 0, 1))


# --- item 3: the CPU segfault of a channels_last 1x1 stride-2 convolution at 8 channels -----


def test_width_0125_on_56_px_views_trains_in_channels_last(tmp_path):
    """ResNet-18 at width 0.125 with the CIFAR stem on 56 px views has the crashing shape (its
    first downsampling, 8 -> 16 channels, on 56 x 56 inputs: bench/cpu_conv_1x1_segfault.py);
    run in a subprocess, so that a segmentation fault fails this test, not pytest."""
    import os
    import subprocess
    import sys

    data = make_image_folder(tmp_path / "data", classes=2, per_class=4, size=56)
    cfg = _tiny_config(tmp_path, image_size=56, batch_size=4, max_steps=1, channels_last=True)
    cmd = [sys.executable, "-m", "unigrad", "pretrain", "--config", cfg, "--data", str(data)]
    cmd += ["--out", str(tmp_path / "run"), "--quiet", "--set", "final_linear_epochs=0"]
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "UNIGRAD_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert (tmp_path / "run" / "last.ckpt").exists()


def test_the_crashing_convolution_is_guarded_on_the_cpu_only():
    from unigrad.engine.device import guard_cpu_convs
    from unigrad.models.networks import resnet_backbone

    net = resnet_backbone("resnet18", width=0.125, cifar_stem=True)[0]
    net = net.to(memory_format=torch.channels_last)
    assert guard_cpu_convs(net, torch.device("cuda")) == 0  # a GPU keeps its layout
    assert guard_cpu_convs(net, torch.device("cpu")) == 1  # layer2's 1x1 downsampling, 8 -> 16
    w = net.layer2[0].downsample[0].weight
    assert w.stride() == (8, 1, 1, 1)
    x = torch.randn(2, 8, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = net.layer2[0].downsample[0](x)
    assert y.is_contiguous()  # the hook gave the convolution a contiguous input


# --- item 2: --max-steps stops early within the schedules of --epochs -----------------------


def _trainer(folder, out, resume=False, **over):
    from unigrad.config import build_config
    from unigrad.engine.trainer import Trainer

    fixed = {"data": str(folder), "out": str(out), "deterministic": True, "amp": "off"}
    quiet = {"diag_every": 0, "knn_every": 0, "final_linear_epochs": 0, "knn_baseline": False}
    cfg = build_config(TINY, {**fixed, **quiet}, over)
    return Trainer(cfg, resume=resume, show_progress=False)


def test_max_steps_keeps_the_epochs_schedules_and_a_longer_resume_continues_them(
    tmp_path, tiny_folder
):
    first = _trainer(tiny_folder, tmp_path / "a", max_steps=2)
    assert first.total_steps == 2 and len(first.parts.lr) == 6  # 2 epochs of 3 steps
    first.fit()
    resumed = _trainer(tiny_folder, tmp_path / "a", resume=True, max_steps=4)
    resumed.fit()
    whole = _trainer(tiny_folder, tmp_path / "b", max_steps=4)
    whole.train()  # the loop alone
    assert resumed.step == whole.step == 4
    for part in ("model", "target", "objective"):
        got, want = getattr(resumed, part).state_dict(), getattr(whole, part).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), part
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert saved["max_steps"] == 4  # config.yaml says where the run now stops


def test_resume_refuses_another_schedule_in_one_line(tmp_path, tiny_folder, capsys):
    from unigrad.engine.checkpoint import load_checkpoint, save_checkpoint
    from unigrad.errors import UserError

    _trainer(tiny_folder, tmp_path / "a", max_steps=2).train()
    with pytest.raises(UserError, match=r"schedules of 6 steps, this run's have 9 \(epochs 2 -> 3"):
        _trainer(tiny_folder, tmp_path / "a", resume=True, epochs=3)
    # a checkpoint written before the schedules' length was recorded: max_steps set it then
    last = tmp_path / "a" / "last.ckpt"
    state = load_checkpoint(last)
    del state["schedule_steps"]
    save_checkpoint(state, last)
    with pytest.raises(UserError, match="squeezed them into its --max-steps 2") as e:
        _trainer(tiny_folder, tmp_path / "a", resume=True, max_steps=4)
    assert "\n" not in str(e.value) and "start a new --out" in str(e.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("base_lr", 0.1), ("warmup_epochs", 0.25), ("momentum_base", 0.9), ("weight_decay", 0.0)],
)
def test_resume_refuses_other_lr_wd_or_ema_settings_in_one_line(key, value, tmp_path, tiny_folder):
    """A resume with another base lr, warm-up, EMA or weight decay would join two schedules
    silently; it is refused naming the key (the same settings resume, tested above)."""
    from unigrad.errors import UserError

    _trainer(tiny_folder, tmp_path / "a", max_steps=1).train()
    with pytest.raises(UserError, match=rf"other lr / weight-decay / EMA schedules \({key}: ") as e:
        _trainer(tiny_folder, tmp_path / "a", resume=True, **{key: value})
    assert "\n" not in str(e.value) and "start a new --out" in str(e.value)


def test_max_steps_help_says_the_schedules_stay_those_of_epochs():
    from unigrad.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["pretrain"]
    text = " ".join(sub.format_help().split())
    assert "the lr and EMA schedules stay those of --epochs" in text
