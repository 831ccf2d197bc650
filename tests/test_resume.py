"""Reliability: SIGKILL at random steps + --resume ends bit-identical to an uninterrupted run;
corrupt checkpoints are refused and the previous one is used; unsafe pickles never run."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY, assert_same_tree

from unigrad.engine.checkpoint import CheckpointError, latest_good, load_checkpoint, save_checkpoint

KILL_CFG = {
    **TINY,
    "epochs": 4,
    "ckpt_every": 1,
    "deterministic": True,
    "diag_every": 3,
    "log_every": 1,
}


def _cmd(cfg_file: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "unigrad",
        "pretrain",
        "--config",
        str(cfg_file),
        "--out",
        str(out),
        "--resume",
        "--quiet",
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}


def run_with_kills(
    cfg_file: Path, out: Path, kills: int, seed: int = 0, timeout: float = 600
) -> list[int]:
    """Start/resume the run, SIGKILL it ``kills`` times at random moments, then let it finish.

    Returns the step of the checkpoint each kill left behind (-1: killed before the first one).
    """
    rng = random.Random(seed)
    steps = []
    deadline = time.time() + timeout
    while len(steps) < kills and time.time() < deadline:
        proc = subprocess.Popen(
            _cmd(cfg_file, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        ckpt = out / "last.ckpt"
        start_mtime = ckpt.stat().st_mtime_ns if ckpt.exists() else 0
        while proc.poll() is None and (not ckpt.exists() or ckpt.stat().st_mtime_ns == start_mtime):
            time.sleep(0.01)  # wait until this process has trained and saved at least once
        time.sleep(rng.uniform(0.0, 0.25))
        if proc.poll() is not None:  # finished before the kill
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        found = latest_good(out, warn=lambda m: None)
        steps.append(found[1]["step"] if found else -1)
    done = subprocess.run(
        _cmd(cfg_file, out), env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return steps


def assert_same_state(a: dict, b: dict) -> None:
    for part in ("model", "target", "objective"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    oa, ob = a["optimizer"]["state"], b["optimizer"]["state"]
    assert oa.keys() == ob.keys()
    for k in oa:
        for name, v in oa[k].items():
            assert torch.equal(v, ob[k][name]), f"optimizer state {k}.{name} differs"
    assert_same_tree(a["callbacks"], b["callbacks"], "callbacks")  # e.g. the online probe's
    assert a["step"] == b["step"]


@pytest.mark.parametrize("kills", [5])
def test_sigkill_and_resume_is_bit_identical(tmp_path, tiny_folder, kills):
    cfg = {**KILL_CFG, "data": str(tiny_folder)}
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    ref = tmp_path / "ref"
    assert run_with_kills(cfg_file, ref, kills=0) == []
    killed = tmp_path / "killed"
    steps = run_with_kills(cfg_file, killed, kills=kills, seed=1)
    assert len(steps) == kills, f"only {len(steps)} kills landed: {steps}"
    assert len(set(steps)) > 1, f"all kills hit the same step: {steps}"
    final = load_checkpoint(ref / "last.ckpt")
    # a callback's state (the online probe's module and optimiser: on by default with labels)
    # survives the kills: equal to the uninterrupted run's
    assert "online_probe" in final["callbacks"]
    assert_same_state(final, load_checkpoint(killed / "last.ckpt"))
    # the metrics log holds every step once
    rows = [line.split(",") for line in (killed / "metrics.csv").read_text().splitlines()[1:]]
    pos_steps = [int(r[0]) for r in rows if r[2] == "pos_sim"]
    assert pos_steps == sorted(set(pos_steps))


def _payload(step: int) -> dict:
    return {"model": {"w": torch.full((3,), float(step))}, "step": step}


def test_truncated_or_random_checkpoint_is_refused_and_previous_used(tmp_path):
    path = tmp_path / "last.ckpt"
    save_checkpoint(_payload(1), path)
    save_checkpoint(_payload(2), path)  # step 1 is kept as last.prev.ckpt
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    warnings = []
    found = latest_good(tmp_path, warn=warnings.append)
    assert found is not None and found[1]["step"] == 1 and "last.ckpt" in warnings[0]
    path.write_bytes(os.urandom(len(data)))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_bit_flip_in_a_tensor_is_detected(tmp_path):
    path = tmp_path / "x.ckpt"
    save_checkpoint({"model": {"w": torch.arange(1000.0)}}, path)
    raw = bytearray(path.read_bytes())
    i = raw.find(torch.arange(1000.0).numpy().tobytes()[400:416])
    assert i > 0
    raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_code_is_refused_and_code_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    path = tmp_path / "evil.ckpt"
    torch.save({"format": "unigrad", "version": 1, "x": evil}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()
