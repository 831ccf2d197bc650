"""Issue 23: guards and defaults that compose (hints, YAML errors, backbones, locks, NaN, ...)."""

import shlex

import pytest
import yaml
from conftest import TINY, make_image_folder

from unigrad.cli import build_parser, main
from unigrad.config import parse_set


def pretrain(capsys, tmp_path, *args, cfg=None):
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump({**TINY, "max_steps": 2, **(cfg or {})}))
    code = main(["pretrain", "--config", str(cfg_file), "--quiet", *args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err, captured.out


@pytest.fixture
def folder(tmp_path):
    return make_image_folder(tmp_path / "data", per_class=6)


# --------------------------------------------------------------------- 6: hints parse
def _hint_args(text: str) -> list[str]:
    """The ``--flag [value]`` words a hint tells the user to type."""
    words = shlex.split(text.replace(";", " ").replace(",", " "))
    i = next(i for i, w in enumerate(words) if w.startswith("--"))
    return words[i : i + 2]


def test_hints_name_flags_that_parse(tmp_path):
    import warnings

    import torch

    from unigrad.data.datasets import bad_image_error
    from unigrad.data.inmemory import _common_size

    hints = [str(bad_image_error("x.jpg", OSError("truncated")))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        imgs = [torch.zeros(3, 8, 8, dtype=torch.uint8)] * 2 + [
            torch.zeros(3, 9, 9, dtype=torch.uint8)
        ]
        _common_size(imgs, None)
    hints += [str(w.message) for w in caught if "resized" in str(w.message)]
    assert len(hints) == 2
    parser = build_parser()
    for hint in hints:
        args = _hint_args(hint)
        ns = parser.parse_args(["pretrain", "--out", str(tmp_path), *args])
        assert ns.set, f"{hint!r}: {args} is not a --set override"
        overrides = parse_set(ns.set)
        from unigrad.config import build_config

        build_config(overrides)  # a valid key and value


def test_every_flag_named_in_the_sources_exists():
    import re
    from pathlib import Path

    import unigrad

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(getattr(a, "choices", None), dict))
    options = {o for sp in sub.choices.values() for a in sp._actions for o in a.option_strings}
    unknown = set()
    for f in Path(unigrad.__file__).parent.rglob("*.py"):
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", f.read_text()):
            if flag not in options:
                unknown.add(f"{flag} ({f.name})")
    assert not unknown


# --------------------------------------------------------------------- 4: YAML syntax errors
def test_config_yaml_syntax_error_is_one_line(capsys, tmp_path, folder):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nbatch_size: [16\nwidth: 0.125\n")
    code = main(["pretrain", "--config", str(bad), "--data", str(folder), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert f"{bad}:" in err and "YAML" in err


# --------------------------------------------------------------------- 7: unknown backbone
def test_unknown_backbone_is_one_line_listing_valid_names(capsys, tmp_path, folder):
    code, err, _ = pretrain(
        capsys,
        tmp_path,
        "--data",
        str(folder),
        "--out",
        str(tmp_path / "r"),
        "--backbone",
        "resnet7",
    )
    assert code == 2 and err.count("\n") == 1 and "resnet7" in err and "resnet18" in err
