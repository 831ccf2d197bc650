import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# the tiny data and configuration live beside the bench scripts, which run without pytest
sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))
from tinydata import TINY, make_image_folder

from unigrad.engine.callbacks import Callback, OnlineProbeMonitor

__all__ = ["TINY", "StopAt", "assert_same_tree", "make_image_folder", "online_probe_of"]

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

#: free TMPDIR below which the suite stops at once (its peak use is about 0.1 GB, mostly
#: ResNet-18 checkpoints, each tmp_path removed when its test passes)
NEEDS_TMP_BYTES = 1 << 30


def pytest_sessionstart(session) -> None:
    """A full disk fails dozens of tests at once, far from the cause: say it first, in one line."""
    tmp = tempfile.gettempdir()
    free = shutil.disk_usage(tmp).free
    if free < NEEDS_TMP_BYTES:
        pytest.exit(
            f"{tmp} has {free / 2**30:.2f} GiB free; the tests need "
            f"{NEEDS_TMP_BYTES / 2**30:.0f} GiB there: free some, or point TMPDIR elsewhere",
            returncode=1,
        )


class StopAt(Callback):
    """Asks the run to stop after step ``at``, as SIGTERM would: the checkpointer (the last
    callback) saves and stops at that step's boundary."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step(self, state) -> None:
        if state.step == self.at:
            state.request_stop(15)


def online_probe_of(trainer):
    """The run's online probe (its callback's :class:`OnlineProbe`), or None."""
    found = [c.probe for c in trainer.callbacks() if isinstance(c, OnlineProbeMonitor)]
    return found[0] if found else None


def assert_same_tree(a, b, where: str = "", skip: frozenset[str] = frozenset()) -> None:
    """Nested dicts / lists of tensors and plain values equal exactly (tensors bit for bit),
    the dict keys in ``skip`` aside (at any depth)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: {a.keys()} vs {b}"
        for k in a.keys() - skip:
            assert_same_tree(a[k], b[k], f"{where}.{k}", skip)
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{where}[{i}]", skip)
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIGRAD_CACHE", str(tmp_path / "cache"))
