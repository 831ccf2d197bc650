"""The engine's loop and callbacks (issue 33): a periodic job in one class, the run directory
locked in fit() and not at construction, the caller's config left as it was."""

import pytest
import torch
from conftest import TINY, StopAt

from unigrad import UserError
from unigrad.config import build_config
from unigrad.engine.callbacks import Callback, Checkpointer, Interrupted, default_callbacks
from unigrad.engine.trainer import Trainer


class NormLogger(Callback):
    """The README's example: the backbone's weight norm every ``every`` steps."""

    def __init__(self, every: int = 2) -> None:
        self.every, self.seen = every, []

    def on_step(self, state):
        if state.step % self.every == 0:
            norm = torch.cat([p.detach().flatten() for p in state.parts.model.parameters()]).norm()
            state.log_metrics({"weight_norm": float(norm)})
            self.seen.append(state.step)


def cfg_for(tmp_path, folder, **over):
    base = {"data": str(folder), "out": str(tmp_path / "run"), "max_steps": 4}
    return build_config(TINY, base, over)


def test_a_user_callback_runs_at_its_period_and_logs(tmp_path, tiny_folder):
    job = NormLogger(2)
    tr = Trainer(cfg_for(tmp_path, tiny_folder), show_progress=False, callbacks=[job])
    # the caller's callbacks come before the checkpoints, which then hold their state
    assert [type(c) for c in tr.callbacks()[-2:]] == [NormLogger, Checkpointer]
    tr.fit()
    assert job.seen == [2, 4]
    text = (tmp_path / "run" / "metrics.csv").read_text()
    assert text.count("weight_norm") == 2


def test_default_callbacks_follow_the_config(tmp_path, tiny_folder):
    tr = Trainer(cfg_for(tmp_path, tiny_folder, diag_every=0, knn_every=0), show_progress=False)
    names = [type(c).__name__ for c in default_callbacks(tr)]
    assert "Diagnostics" not in names and "KnnMonitor" not in names
    assert names[0] == "MetricsLog" and names[-1] == "Checkpointer"


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


class Counter(Callback):
    """A callback with state: the steps it saw and the sum of their losses (a device tensor)."""

    def __init__(self) -> None:
        self.steps, self.loss_sum, self.loaded_before_start = 0, torch.zeros(()), None

    def state_dict(self):
        return {"steps": self.steps, "loss_sum": self.loss_sum}

    def load_state_dict(self, state):
        self.steps, self.loss_sum = state["steps"], state["loss_sum"]
        self.loaded_before_start = True

    def on_fit_start(self, state):
        if self.loaded_before_start is None:
            self.loaded_before_start = False

    def on_step(self, state):
        self.steps += 1
        self.loss_sum = self.loss_sum + state.stats["loss"].detach().float()


def test_a_callbacks_state_is_checkpointed_and_a_resume_restores_it(tmp_path, tiny_folder):
    """6 steps straight vs stopped after step 3 and resumed by a new trainer with a fresh
    callback: the resumed callback continues from the checkpointed state (before the loop
    starts), so both count 6 steps and the same loss sum."""
    over = {"max_steps": 6, "epochs": 10, "deterministic": True, "amp": "off", "knn_every": 0}
    ref = Counter()
    Trainer(cfg_for(tmp_path / "a", tiny_folder, **over), show_progress=False,
            callbacks=[ref]).fit()  # fmt: skip
    cfg = cfg_for(tmp_path / "b", tiny_folder, **over)
    cut = Counter()
    with pytest.raises(Interrupted):
        Trainer(cfg, show_progress=False, callbacks=[cut, StopAt(3)]).fit()
    assert cut.steps == 3  # the checkpointer runs last: it sees the request of this step
    resumed = Counter()
    tr = Trainer(cfg, resume=True, show_progress=False, callbacks=[resumed])
    assert tr.step == 3 and resumed.steps == 3  # restored at construction
    tr.fit()
    assert resumed.loaded_before_start is True
    assert resumed.steps == ref.steps == 6
    assert torch.equal(resumed.loss_sum, ref.loss_sum)


def test_two_callbacks_with_one_state_key_are_refused_in_one_line(tmp_path, tiny_folder):
    tr = Trainer(cfg_for(tmp_path, tiny_folder), show_progress=False,
                 callbacks=[Counter(), Counter()])  # fmt: skip
    with pytest.raises(UserError, match="give one of them another state_key") as e:
        tr.state_dict()
    assert "\n" not in str(e.value)


class Reference(Callback):
    """The gradient norm after backward, read into Python at once (eager only)."""

    def __init__(self) -> None:
        self.norms = []

    def after_backward(self, clock) -> None:
        grads = [p.grad.flatten() for p in self.params if p.grad is not None]
        self.norms.append(float(torch.cat(grads).norm()))

    def on_fit_start(self, state):
        self.params = list(state.parts.model.parameters())


def test_grad_norm_is_a_step_hook_logged_at_its_boundaries(tmp_path, tiny_folder, monkeypatch):
    """``GradNormLog``: ||g||_2 of the online network after backward, computed inside the step
    and logged as the mean over its period: equal to the norm read eagerly after each backward,
    and the same with the step compiled (the hook compiled into the step)."""
    from test_compiled_step import TinyNet

    from unigrad.engine.callbacks import GradNormLog

    monkeypatch.setenv("UNIGRAD_COMPILE_BACKEND", "aot_eager")
    logged = {}
    for mode in ("off", "step"):
        torch._dynamo.reset()
        over = {"max_steps": 4, "epochs": 10, "amp": "off", "knn_every": 0, "diag_every": 0,
                "compile": mode, "method": "byol", "deterministic": True}  # fmt: skip
        ref = Reference()
        cbs = [GradNormLog(every=2)] + ([ref] if mode == "off" else [])
        torch.manual_seed(0)
        Trainer(cfg_for(tmp_path / mode, tiny_folder, **over), show_progress=False,
                backbone=TinyNet(), callbacks=cbs).fit()  # fmt: skip
        text = (tmp_path / mode / "run" / "metrics.csv").read_text()
        rows = [r.split(",") for r in text.splitlines()]
        logged[mode] = {int(r[0]): float(r[3]) for r in rows if r[2] == "grad/norm"}
        if mode == "off":
            want = {2: sum(ref.norms[:2]) / 2, 4: sum(ref.norms[2:]) / 2}
            assert logged[mode] == pytest.approx(want, rel=1e-5)
    assert sorted(logged["off"]) == [2, 4] and all(v > 0 for v in logged["off"].values())
    assert logged["step"] == pytest.approx(logged["off"], rel=1e-4)
