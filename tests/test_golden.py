"""The refactor guard: every golden case still gives the fingerprints recorded before it."""

import json

import pytest
import torch
from golden import GOLDEN, cases, run

RECORD = json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name", sorted(RECORD))
def test_golden_fingerprint_unchanged(name):
    got = torch.tensor(run(cases()[name]), dtype=torch.float64)
    want = torch.tensor(RECORD[name], dtype=torch.float64)
    assert got.shape == want.shape, "the model, target or objective state changed shape"
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_golden_cases_are_distinct_and_sensitive():
    """A fingerprint tells methods apart, and a 1e-3 change of one hyperparameter moves it."""
    fps = {tuple(round(v, 6) for v in fp) for fp in RECORD.values()}
    assert len(fps) == len(RECORD)
    from unigrad.objective import Objective

    base = run(cases()["unigrad-grad-unigrad"])
    orig = Objective.__init__

    def nudged(self, *a, **kw):
        orig(self, *a, **kw)
        self.lambd *= 1.001

    try:
        Objective.__init__ = nudged
        moved = run(cases()["unigrad-grad-unigrad"])
    finally:
        Objective.__init__ = orig
    assert not torch.allclose(torch.tensor(base), torch.tensor(moved), rtol=1e-7, atol=1e-9)
