"""The engine's loop and callbacks (issue 33): a periodic job in one class, the run directory
locked in fit() and not at construction, the caller's config left as it was."""

import pytest
import torch
from conftest import TINY

from unigrad import UserError
from unigrad.config import build_config
from unigrad.engine.callbacks import Callback, default_callbacks
from unigrad.engine.trainer import Trainer


class NormLogger(Callback):
    """The README's example: the backbone's weight norm every ``every`` steps."""

    def __init__(self, every: int = 2) -> None:
        self.every, self.seen = every, []

    def on_step(self, trainer, stats, n_images):
        if trainer.step % self.every == 0:
            norm = torch.cat([p.detach().flatten() for p in trainer.model.parameters()]).norm()
            trainer.log_metrics({"weight_norm": float(norm)})
            self.seen.append(trainer.step)


def cfg_for(tmp_path, folder, **over):
    base = {"data": str(folder), "out": str(tmp_path / "run"), "max_steps": 4}
    return build_config(TINY, base, over)


def test_a_user_callback_runs_at_its_period_and_logs(tmp_path, tiny_folder):
    job = NormLogger(2)
    tr = Trainer(cfg_for(tmp_path, tiny_folder), show_progress=False, callbacks=[job])
    assert type(tr.callbacks()[-1]) is NormLogger
    tr.fit()
    assert job.seen == [2, 4]
    text = (tmp_path / "run" / "metrics.csv").read_text()
    assert text.count("weight_norm") == 2


def test_default_callbacks_follow_the_config(tmp_path, tiny_folder):
    tr = Trainer(cfg_for(tmp_path, tiny_folder, diag_every=0, knn_every=0), show_progress=False)
    names = [type(c).__name__ for c in default_callbacks(tr)]
    assert "Diagnostics" not in names and "KnnMonitor" not in names
    assert names[0] == "MetricsLog" and "Checkpointer" in names


def test_construction_writes_nothing_and_fit_takes_the_lock(tmp_path, tiny_folder):
    cfg = cfg_for(tmp_path, tiny_folder)
    tr = Trainer(cfg, show_progress=False)
    assert not (tmp_path / "run").exists()  # nothing written, no lock held yet
    Trainer(cfg, show_progress=False)  # a second construction is not refused
    tr.fit()
    assert (tmp_path / "run" / ".lock").exists() and (tmp_path / "run" / "config.yaml").exists()


def test_the_callers_config_is_left_as_it_was(tmp_path, tiny_folder):
    cfg = cfg_for(tmp_path, tiny_folder, image_size=None)
    before = repr(cfg)
    Trainer(cfg, show_progress=False).fit()
    assert repr(cfg) == before


def test_out_naming_a_file_is_one_line(tmp_path, tiny_folder):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(UserError, match="is a file, not a directory"):
        Trainer(cfg_for(tmp_path, tiny_folder, out=str(path)), show_progress=False)
