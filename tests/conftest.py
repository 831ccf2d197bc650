import os
import sys
from pathlib import Path

import pytest
import torch

# the tiny data and configuration live beside the bench scripts, which run without pytest
sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))
from tinydata import TINY, make_image_folder

__all__ = ["TINY", "make_image_folder"]

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

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
