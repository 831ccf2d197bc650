"""The refactor guard: every golden case still gives the fingerprints recorded before it."""

import json

import pytest
import torch
from golden import GOLDEN, cases, run

RECORD = json.loads(GOLDEN.read_text())

#: Cases that must coincide: a loss form and its exact gradient form (MoCo eq. 18, DirectPred
#: eq. 26, UniGrad eq. 14; multi-crop too), eq. 27 vs 28 (the dropped term vanishes on the
#: sphere's tangent), NT-Xent with detached (momentum) targets vs row b (eq. 21), and UniGrad
#: with F from the online outputs, which is row e.
IDENTICAL = [
    {"moco-loss", "moco-grad-a"},
    {"directpred-loss", "directpred-grad-eq26"},
    {"directpred-grad-d", "directpred-grad-eq27"},
    {"directpred-grad-e", "unigrad-grad-online"},
    {"simclr-loss-momentum", "simclr-grad-momentum"},
    {"unigrad-loss", "unigrad-grad-unigrad"},
    {"unigrad-grad-multicrop", "unigrad-loss-multicrop"},
]


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny float64 ops: threads only add overhead
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("name", sorted(RECORD))
def test_golden_fingerprint_unchanged(name):
    got = torch.tensor(run(cases()[name]), dtype=torch.float64)
    want = torch.tensor(RECORD[name], dtype=torch.float64)
    assert got.shape == want.shape, "the model, target or objective state changed shape"
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_golden_cases_coincide_exactly_where_the_paper_says():
    """Fingerprints group as the exact identities predict and are distinct otherwise, and a 1e-3
    change of one hyperparameter moves a fingerprint."""
    groups: dict[tuple, set[str]] = {}
    for name, fp in RECORD.items():
        groups.setdefault(tuple(round(v, 6) for v in fp), set()).add(name)
    assert sorted(map(sorted, (g for g in groups.values() if len(g) > 1))) == sorted(
        map(sorted, IDENTICAL)
    )
    from unigrad.core.objective import Objective

    base = run(cases()["unigrad-grad-unigrad"])
    orig = Objective.__init__

    def nudged(self, *a, **kw):
        orig(self, *a, **kw)
        self.hp["lambd"] *= 1.001

    try:
        Objective.__init__ = nudged
        moved = run(cases()["unigrad-grad-unigrad"])
    finally:
        Objective.__init__ = orig
    assert not torch.allclose(torch.tensor(base), torch.tensor(moved), rtol=1e-7, atol=1e-9)
