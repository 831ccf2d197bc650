"""Every script in examples/ runs 2 steps of its own training loop on a few images (issue 22)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def test_one_example_per_family_each_short():
    names = {p.stem for p in EXAMPLES}
    assert {"contrastive", "asymmetric", "decorrelation", "unigrad_loop"} <= names
    for p in EXAMPLES:
        assert len(p.read_text().splitlines()) < 60, p.name


def _python(
    args: list[str], cwd: Path, code: int = 0, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` in ``cwd`` with only this checkout importable; assert its exit code."""
    p = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PYTHONPATH": str(ROOT)},
    )
    assert p.returncode == code, p.stderr[-2000:]
    return p


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_trains_two_steps(script, tiny_folder, tmp_path):
    args = [str(script), "--data", str(tiny_folder / "train"), "--steps", "2"]
    p = _python([*args, "--batch-size", "4", "--workers", "0"], tmp_path)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("step ")]
    assert [ln.split(":")[0] for ln in lines] == ["step 1", "step 2"], p.stdout
    assert "nan" not in p.stdout
    if script.stem == "unigrad_loop":  # the EMA target is saved with the encoder (issue 45)
        saved = torch.load(tmp_path / "unigrad_loop.pt", weights_only=True)
        assert saved["target"].keys() == {f"net.{k}" for k in saved["encoder"]}


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_refuses_a_folder_smaller_than_one_batch(script, tiny_folder, tmp_path):
    """48 images and a batch of 64: one line, where the loader (drop_last) was empty and the
    loop waited for a step forever (issue 45 item 10)."""
    args = [str(script), "--data", str(tiny_folder / "train"), "--batch-size", "64"]
    p = _python([*args, "--workers", "0"], tmp_path, code=1, timeout=300)
    assert p.stderr.count("\n") == 1 and "fewer than --batch-size 64" in p.stderr


def test_the_readme_loop_runs(tiny_folder, tmp_path):
    """The README's UniGrad loop, as printed, on a tiny folder (batch 16 instead of 256)."""
    text = (ROOT / "README.md").read_text()
    start = text.index("## Use unigrad in your own training loop")
    code = text[text.index("```python", start) + len("```python") : text.index("```\n", start)]
    code = code.replace('"DIR/train"', repr(str(tiny_folder / "train")))
    code = code.replace("batch_size=256", "batch_size=16")
    p = _python(["-c", code + "\nprint('done', step, objective.stats['pos_sim'].item())"], tmp_path)
    assert p.stdout.startswith("done 2 ")  # 48 images, batch 16: steps 0, 1, 2
