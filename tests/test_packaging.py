"""Packaging (issue 22): the version is defined once, the optional extras are optional, and the
files a package needs are shipped."""

import subprocess
import sys
import tomllib
from pathlib import Path

import unigrad

ROOT = Path(__file__).resolve().parents[1]

# Run in a child process where matplotlib, tensorboard and timm cannot be imported, as after a
# plain `pip install .`: a 2-step pretraining with TensorBoard on (the default) and a report.
WITHOUT_EXTRAS = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("matplotlib", "tensorboard", "timm"):
            raise ImportError(f"blocked {name}")
sys.meta_path.insert(0, Block())
from unigrad.cli import main
code = main(sys.argv[1:])
import unigrad.experiments.report as r
print("REPORT", r.write_report([sys.argv[sys.argv.index("--out") + 1]]))
sys.exit(code)
"""


def test_version_is_defined_once():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {unigrad.__version__}" in changelog  # the release is described


def test_shipped_files():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert (ROOT / "unigrad" / "py.typed").exists()
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in cfg["tool"]["setuptools"]["package-data"]["unigrad"]
    extras = cfg["project"]["optional-dependencies"]
    assert {"report", "tb", "timm"} <= set(extras)
    core = " ".join(cfg["project"]["dependencies"])
    assert not any(x in core for x in ("matplotlib", "tensorboard", "timm"))


def test_trains_and_reports_without_the_extras(tiny_folder, tmp_path):
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(tiny_folder), "--out", str(out), "--backbone", "resnet18"]
    args += ["--width", "0.125", "--cifar-stem", "--batch-size", "8", "--max-steps", "2"]
    args += ["--set", "proj_dim=32", "--set", "final_linear_epochs=0", "--set", "knn_k=3"]
    args += ["--set", "amp=off"]
    p = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "UNIGRAD_CACHE": str(tmp_path / "c"), "PATH": ""},
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "pip install 'unigrad[tb]'" in p.stderr  # TensorBoard asked for (default), missing
    assert (out / "metrics.csv").exists() and not (out / "tb").exists()
    report = Path(p.stdout.split("REPORT ")[-1].strip()).read_text()
    assert "pip install 'unigrad[report]'" in report and not list(out.glob("report/*.png"))


def test_lars_without_timm_says_which_extra(monkeypatch):
    import pytest
    import torch

    from unigrad.engine.optim import build_optimizer
    from unigrad.errors import UserError

    monkeypatch.setitem(sys.modules, "timm.optim", None)
    with pytest.raises(UserError, match=r"pip install 'unigrad\[timm\]'"):
        build_optimizer(torch.nn.Linear(2, 2), "lars", lr=0.1, weight_decay=0.0)
