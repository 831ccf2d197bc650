"""Issue 23: guards and defaults that compose (hints, YAML errors, backbones, locks, NaN, ...)."""

import shlex

import pytest
import yaml
from conftest import TINY, make_image_folder

from unigrad.cli import build_parser, main
from unigrad.config import parse_set


def pretrain(capsys, tmp_path, *args, cfg=None):
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump({**TINY, "max_steps": 2, **(cfg or {})}))
    code = main(["pretrain", "--config", str(cfg_file), "--quiet", *args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err, captured.out


@pytest.fixture
def folder(tmp_path):
    return make_image_folder(tmp_path / "data", per_class=6)


# --------------------------------------------------------------------- 6: hints parse
def _hint_args(text: str) -> list[str]:
    """The ``--flag [value]`` words a hint tells the user to type."""
    words = shlex.split(text.replace(";", " ").replace(",", " "))
    i = next(i for i, w in enumerate(words) if w.startswith("--"))
    return words[i : i + 2]


def test_hints_name_flags_that_parse(tmp_path):
    import warnings

    import torch

    from unigrad.data.datasets import bad_image_error
    from unigrad.data.inmemory import common_size

    hints = [str(bad_image_error("x.jpg", OSError("truncated")))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        imgs = [torch.zeros(3, 8, 8, dtype=torch.uint8)] * 2 + [
            torch.zeros(3, 9, 9, dtype=torch.uint8)
        ]
        common_size(imgs, None)
    hints += [str(w.message) for w in caught if "resized" in str(w.message)]
    assert len(hints) == 2
    parser = build_parser()
    for hint in hints:
        args = _hint_args(hint)
        ns = parser.parse_args(["pretrain", "--out", str(tmp_path), *args])
        assert ns.set, f"{hint!r}: {args} is not a --set override"
        overrides = parse_set(ns.set)
        from unigrad.config import build_config

        build_config(overrides)  # a valid key and value


def test_every_flag_named_in_the_sources_exists():
    import re
    from pathlib import Path

    import unigrad

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(getattr(a, "choices", None), dict))
    options = {o for sp in sub.choices.values() for a in sp._actions for o in a.option_strings}
    unknown = set()
    for f in Path(unigrad.__file__).parent.rglob("*.py"):
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", f.read_text()):
            if flag not in options:
                unknown.add(f"{flag} ({f.name})")
    assert not unknown


# --------------------------------------------------------------------- 4: YAML syntax errors
def test_config_yaml_syntax_error_is_one_line(capsys, tmp_path, folder):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nbatch_size: [16\nwidth: 0.125\n")
    code = main(["pretrain", "--config", str(bad), "--data", str(folder), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert f"{bad}:" in err and "YAML" in err


# --------------------------------------------------------------------- 7: unknown backbone
def test_unknown_backbone_is_one_line_listing_valid_names(capsys, tmp_path, folder):
    code, err, _ = pretrain(
        capsys,
        tmp_path,
        "--data",
        str(folder),
        "--out",
        str(tmp_path / "r"),
        "--backbone",
        "resnet7",
    )
    assert code == 2 and err.count("\n") == 1 and "resnet7" in err and "resnet18" in err


# --------------------------------------------------------------------- 1: NaN guard
def test_divergence_never_leaves_a_non_finite_checkpoint(capsys, tmp_path, tiny_folder):
    import torch

    from unigrad.engine.checkpoint import load_checkpoint

    run = tmp_path / "run"
    code, err, _ = pretrain(
        capsys,
        tmp_path,
        "--data",
        str(tiny_folder),
        "--out",
        str(run),
        "--epochs",
        "3",
        "--set",
        "base_lr=1e30",
        "--set",
        "ckpt_every=1",
        cfg={"max_steps": 6, "log_every": 100, "amp": "off", "diag_every": 0},
    )
    assert code == 3 and "non-finite" in err and err.count("\n") == 1
    files = sorted(run.glob("*.ckpt"))
    for f in files:
        state = load_checkpoint(f)
        for part in ("model", "target", "objective", "optimizer"):
            stack = [state[part]]
            while stack:
                x = stack.pop()
                if isinstance(x, dict):
                    stack += list(x.values())
                elif isinstance(x, torch.Tensor) and x.is_floating_point():
                    assert torch.isfinite(x).all(), f"{f.name}: {part} is not finite"
    if files:
        named = err.split("last good checkpoint: ")[1].split(". ")[0]
        assert named in {str(f) for f in files}
    else:
        assert "no good checkpoint" in err


def test_all_finite_is_exact_for_large_finite_values():
    import torch

    from unigrad.engine.resume import all_finite

    big = {"a": torch.full((4,), 3e38), "b": [torch.ones(2, dtype=torch.float16) * 6e4]}
    assert all_finite(big) and all_finite({"n": torch.arange(3)})
    assert not all_finite({**big, "c": {"d": torch.tensor([1.0, float("nan")])}})
    assert not all_finite({"e": torch.tensor([float("-inf")])})


# --------------------------------------------------------------------- 2: run directory lock
def test_second_writer_is_refused_naming_the_holder(capsys, tmp_path, folder):
    import fcntl
    import os

    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "w") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write(f"{os.getpid()}\n")
        holder.flush()
        code, err, _ = pretrain(capsys, tmp_path, "--data", str(folder), "--out", str(run))
        assert code != 0 and err.count("\n") == 1 and f"PID {os.getpid()}" in err
        assert not list(run.glob("*.ckpt")) and not (run / "config.yaml").exists()
    code, err, _ = pretrain(capsys, tmp_path, "--data", str(folder), "--out", str(run))
    assert code == 0, err


def test_lock_left_by_a_killed_process_does_not_block(capsys, tmp_path, folder):
    import signal
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    hold = (
        "import fcntl, os, sys, time\n"
        f"f = open({str(run / '.lock')!r}, 'a+')\n"
        "fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "f.write(str(os.getpid())); f.flush(); print('locked', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    code, err, _ = pretrain(capsys, tmp_path, "--data", str(folder), "--out", str(run))
    assert code != 0 and f"PID {proc.pid}" in err
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / ".lock").read_text().strip() == str(proc.pid)  # stale file stays behind
    code, err, _ = pretrain(capsys, tmp_path, "--data", str(folder), "--out", str(run))
    assert code == 0, err


# --------------------------------------------------------------------- 3: --resume unreadable
def test_resume_refuses_when_every_checkpoint_is_unreadable(capsys, tmp_path, folder):
    import hashlib

    run = tmp_path / "run"
    args = ("--data", str(folder), "--out", str(run))
    assert pretrain(capsys, tmp_path, *args)[0] == 0
    last = run / "last.ckpt"
    for p in run.glob("*.prev.ckpt"):
        p.unlink()
    last.write_bytes(last.read_bytes()[:200])  # truncated, no previous one
    digest = hashlib.sha256(last.read_bytes()).hexdigest()
    code, err, _ = pretrain(capsys, tmp_path, *args, "--resume")
    assert code != 0 and "last.ckpt" in err and "--out" in err and "delete" in err
    assert hashlib.sha256(last.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in run.glob("*.ckpt")) == ["last.ckpt"]


def test_resume_without_checkpoint_starts_fresh_saying_so_on_stderr(capsys, tmp_path, folder):
    code, err, out = pretrain(
        capsys, tmp_path, "--data", str(folder), "--out", str(tmp_path / "new"), "--resume"
    )
    assert code == 0 and "starting from scratch" in err and "starting from scratch" not in out


# --------------------------------------------------------------------- 5: defaults that compose
@pytest.mark.parametrize("stem", [[], ["--cifar-stem"]], ids=["imagenet-stem", "cifar-stem"])
def test_bare_command_trains_at_the_data_size_with_a_warmup_that_fits(capsys, tmp_path, stem):
    data = make_image_folder(tmp_path / "d32", splits=("train",), classes=2, per_class=16, size=32)
    run = tmp_path / "run"
    args = ["--method", "unigrad", "--data", str(data), "--out", str(run), "--epochs", "1"]
    args += ["--max-steps", "2", "--width", "0.125", "--batch-size", "16", "--quiet", *stem]
    args += ["--set", "proj_dim=64"]  # keeps the test fast; the defaults at issue are others
    code = main(["pretrain", *args])
    err = capsys.readouterr().err
    assert code == 0, err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["image_size"] == 32 and 0 < saved["warmup_epochs"] <= 1
    assert "warm-up shortened" in err and err.count("warm-up") == 1


def test_explicit_warmup_longer_than_the_run_is_refused_with_the_fix(capsys, tmp_path, folder):
    code, err, _ = pretrain(
        capsys, tmp_path, "--data", str(folder), "--out", str(tmp_path / "r"), "--epochs", "2",
        "--set", "warmup_epochs=5",
    )  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "warmup_epochs=1" in err and "--epochs" in err


def test_image_size_follows_the_folder(tmp_path):
    from unigrad.data.sources import FolderSource

    small = make_image_folder(tmp_path / "s", splits=("train",), classes=1, per_class=3, size=24)
    assert FolderSource(str(small)).image_side("train") == 24
    big = make_image_folder(tmp_path / "b", splits=("train",), classes=1, per_class=2, size=300)
    assert FolderSource(str(big)).image_side("train") == 224
    from PIL import Image

    Image.new("RGB", (40, 30)).save(small / "train" / "c0" / "odd.png")
    assert FolderSource(str(small)).image_side("train") == 224


# --------------------------------------------------------------------- 8: one-class data
def test_one_class_data_trains_but_evaluation_is_skipped_loudly(capsys, tmp_path):
    data = make_image_folder(tmp_path / "one", classes=1, per_class=16)
    run = tmp_path / "run"
    code, err, out = pretrain(
        capsys, tmp_path, "--data", str(data), "--out", str(run), "--json", cfg={"diag_every": 0}
    )
    assert code == 0 and "WARNING" in err and "1 class" in err
    assert "knn_top1" not in out and "knn" not in (run / "metrics.csv").read_text()
    code = main(["knn", str(run / "last.ckpt"), "--data", str(data), "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "1 class" in err and err.count("\n") == 1


# --------------------------------------------------------------------- 9: amp auto measures
def _amp_cfg(**kw):
    from unigrad.config import build_config

    return build_config({**TINY, "method": "byol", **kw})


def _tiny_model(cfg):
    from unigrad.models.networks import build_model

    return build_model(
        cfg.backbone, cfg.width, cfg.cifar_stem, cfg.proj_depth, cfg.proj_dim, predictor=True
    )


def test_amp_auto_on_cpu_measures_once_then_uses_the_cache(monkeypatch, capsys, tmp_path):
    import json
    import time

    import torch

    from unigrad.engine import device as dev

    calls = []
    real = dev.measure_cpu_amp

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(dev, "measure_cpu_amp", counting)
    cfg = _amp_cfg()
    model = _tiny_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t0 = time.perf_counter()
    dtype = dev.resolve_amp(cfg, model, torch.device("cpu"), batch=4)
    assert time.perf_counter() - t0 < 60  # ~0.2 s on an idle machine; loaded CI hosts vary
    assert calls == [1] and cfg.amp_resolved in ("fp32", "bf16") and "fp32" in cfg.amp_measured
    assert dtype == dev.DTYPES[cfg.amp_resolved]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats restored
    assert all(p.grad is None for p in model.parameters())
    cache = json.loads(dev.amp_cache_path().read_text())
    (verdict,) = cache.values()
    assert verdict["choice"] == cfg.amp_resolved and verdict["fp32_ms"] > 0
    assert "amp auto:" in capsys.readouterr().err
    # a forged verdict in the cache is used as is: the measurement does not run again
    key = next(iter(cache))
    other = "bf16" if verdict["choice"] == "fp32" else "fp32"
    cache[key] = {**verdict, "choice": other}
    dev.amp_cache_path().write_text(json.dumps(cache))
    cfg2 = _amp_cfg()
    assert dev.resolve_amp(cfg2, model, torch.device("cpu"), batch=4) == dev.DTYPES[other]
    assert calls == [1] and cfg2.amp_resolved == other
    # another network is another verdict
    wide = _amp_cfg(width=0.25)
    dev.resolve_amp(wide, _tiny_model(wide), torch.device("cpu"), batch=4)
    assert calls == [1, 1]


@pytest.mark.parametrize(
    "fp32,bf16,choice,rounds",
    [
        # a burst of host load during the first fp32 passes (as when another process's workers
        # are still running) no longer hands the verdict to bf16: the rounds alternate
        ([1.0, 0.9, 0.1, 0.1], [1.0, 0.15, 0.15, 0.15], "fp32", 4),
        ([1.0, 0.2, 0.2, 0.2], [1.0, 0.1, 0.5, 0.1], "bf16", 4),
        ([1.0, 0.1, 0.1, 0.1], [3.5, 9.0, 9.0, 9.0], "fp32", 1),  # emulated: one warm-up each
    ],
)
def test_amp_measurement_alternates_precisions(monkeypatch, fp32, bf16, choice, rounds):
    import torch

    from unigrad.engine import device as dev

    order = []

    def scripted(model, views, dtype):
        times = bf16 if dtype is torch.bfloat16 else fp32
        order.append("bf16" if dtype is torch.bfloat16 else "fp32")
        return times[sum(o == order[-1] for o in order) - 1]

    monkeypatch.setattr(dev, "_pass_s", scripted)
    cfg = _amp_cfg()
    verdict = dev.measure_cpu_amp(_tiny_model(cfg), 8, 2, False, iters=3)
    assert verdict["choice"] == choice
    assert order == ["fp32", "bf16"] * rounds


@pytest.mark.parametrize("amp,name", [("off", "fp32"), ("bf16", "bf16"), ("fp16", "fp16")])
def test_explicit_amp_never_measures(monkeypatch, amp, name):
    import torch

    from unigrad.engine import device as dev

    def boom(*a, **kw):
        raise AssertionError("measured")

    monkeypatch.setattr(dev, "measure_cpu_amp", boom)
    cfg = _amp_cfg(amp=amp)
    assert dev.resolve_amp(cfg, _tiny_model(cfg), torch.device("cpu"), batch=4) == dev.DTYPES[name]
    assert cfg.amp_resolved == name and not dev.amp_cache_path().exists()
    resumed = _amp_cfg(amp_resolved="bf16")  # a resumed auto run keeps its precision
    assert dev.resolve_amp(resumed, None, torch.device("cpu"), batch=4) == torch.bfloat16


def test_config_yaml_records_the_amp_verdict_and_loads_back(capsys, tmp_path, folder):
    run = tmp_path / "run"
    args = ("--data", str(folder), "--out", str(run))
    assert pretrain(capsys, tmp_path, *args, cfg={"diag_every": 0})[0] == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["amp"] == "auto" and saved["amp_resolved"] in ("fp32", "bf16")
    assert "fp32" in saved["amp_measured"]
    code, err, _ = pretrain(capsys, tmp_path, *args, "--resume", cfg={"max_steps": 3})
    assert code == 0 and "amp auto" not in err, err


def test_amp_off_on_cuda_means_ieee_fp32(monkeypatch):
    """PyTorch lets cuDNN use TF32 by default: a CUDA run recorded as fp32 turns it off."""
    import torch

    from unigrad.engine import device as dev

    calls = []
    monkeypatch.setattr(dev, "ieee_fp32_on_cuda", lambda: calls.append(1))
    cfg = _amp_cfg(amp="off")
    assert dev.resolve_amp(cfg, None, torch.device("cuda"), batch=4) is None
    assert calls == [1] and cfg.amp_resolved == "fp32"
    for amp, device in [("bf16", "cuda"), ("off", "cpu")]:
        dev.resolve_amp(_amp_cfg(amp=amp), None, torch.device(device), batch=4)
    assert calls == [1]  # reduced precision, or the CPU: nothing to turn off
    monkeypatch.undo()
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    try:
        dev.ieee_fp32_on_cuda()  # flags only: runs without a GPU
        assert conv.fp32_precision == matmul.fp32_precision == "ieee"
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved
