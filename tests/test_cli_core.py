"""The core sub-commands: `unigrad methods` and `unigrad check-gradients`."""

import json
import subprocess
import sys

from unigrad.cli import main
from unigrad.methods import METHODS


def test_methods_json_lists_every_method_with_forms(capsys):
    assert main(["methods", "--json", "--dim", "512"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in out] == list(METHODS)
    uni = next(m for m in out if m["name"] == "unigrad")
    assert uni["forms"] == ["loss", "grad"] and uni["grads"]["unigrad"]["lambda_at_dim"] == 25.0
    assert set(next(m for m in out if m["name"] == "barlow_twins")["grads"]) == {"f", "g", "h"}


def test_methods_table_mentions_rows(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for row in ("a*", "b*", "d*", " e ", "f*", " g ", " h ", "i*", " j "):
        assert row in out


def test_check_gradients_json_has_the_contract_keys(capsys):
    assert main(["check-gradients", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {tuple(sorted(r)) for r in rows} == {("cosine", "kind", "method", "name", "rel_error")}
    exact = [r for r in rows if r["kind"] == "exact"]
    assert exact and all(r["rel_error"] < 1e-6 for r in exact)
    names = {r["name"] for r in rows}
    for n in (
        "moco eq.18",
        "simclr eq.20",
        "simclr eq.21",
        "directpred eq.26",
        "barlow_twins eq.32",
        "vicreg eq.39",
        "simclr eq.20->21",
        "directpred eq.26->27",
        "directpred eq.27->28",
        "barlow_twins A->I",
        "vicreg eq.39 drop last term",
    ):
        assert n in names


def test_user_error_prints_one_line_without_traceback(capsys):
    code = main(["pretrain", "--method", "nope", "--out", "/tmp/x"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: unknown method 'nope'") and "Traceback" not in err


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    cmd = [sys.executable, "-m", "unigrad", "compare", "--grid", "table2", "--dry-run"]
    p = subprocess.Popen(
        [*cmd, "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    p.stdout.close()  # like `| head -0`: every write fails with EPIPE
    err = p.stderr.read().decode()
    assert p.wait() == 141 and "Traceback" not in err and "Exception ignored" not in err
