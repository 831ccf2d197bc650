"""Configuration in sections (issue 33, item 2): each section defined and checked beside its
code, flat and sectioned YAML equal, key lists derived from field metadata, a Config built
directly checked as make_config checks it."""

from dataclasses import fields

import pytest
from conftest import TINY

from unigrad import UserError
from unigrad.config import KEYS, SECTIONS, Config, build_config, key_docs, keys_tagged, to_dict
from unigrad.engine.resume import ARCH_KEYS
from unigrad.engine.trainer import Trainer
from unigrad.experiments import grid


def test_every_key_has_one_section_and_a_doc():
    owners = [f.name for cls in SECTIONS.values() for f in fields(cls)]
    assert sorted(owners) == sorted(KEYS) and len(owners) == len(set(owners))
    docs = key_docs()
    assert all(docs[k][1] for k in KEYS), [k for k in KEYS if not docs[k][1]]
    assert docs["batch_size"][0] == "optim" and docs["blur_p"][0] == "augment"
    # each section is defined beside the code it configures
    homes = {name: cls.__module__ for name, cls in SECTIONS.items()}
    assert homes["model"].startswith("unigrad.models") and homes["data"].startswith("unigrad.data")
    assert homes["augment"] == "unigrad.data.recipe" and homes["eval"].startswith("unigrad.eval")


def test_sectioned_yaml_equals_flat_and_a_misplaced_key_is_named():
    flat = build_config({"batch_size": 64, "backbone": "resnet34", "data": "D", "lambd": 3.0})
    nested = build_config(
        {
            "optim": {"batch_size": 64},
            "model": {"backbone": "resnet34"},
            "data": {"data": "D"},
            "objective": {"hparams": {"lambd": 3.0}},
        }
    )
    assert to_dict(flat) == to_dict(nested)
    with pytest.raises(UserError, match="'batch_size' belongs to section 'optim', not 'model'"):
        build_config({"model": {"batch_size": 64}})


def test_key_lists_are_derived_from_the_tags():
    assert keys_tagged("arch") == ARCH_KEYS
    assert set(ARCH_KEYS) >= {"method", "backbone", "proj_dim", "batch_size", "seed"}
    assert keys_tagged("baseline") == grid.BASELINE_KEYS
    assert {"out", "amp", "workers", "log_every"} <= set(keys_tagged("untrained"))
    assert not {"base_lr", "epochs", "blur_p", "proj_dim"} & set(keys_tagged("untrained"))


def test_section_slice_holds_the_configs_values():
    cfg = build_config({"proj_dim": 64, "blur_p": [1.0, 0.1]})
    model = cfg.section("model")
    assert type(model).__name__ == "ModelConfig" and model.proj_dim == 64
    assert cfg.section("augment").blur_p == [1.0, 0.1]


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"batch_size": 1}, "batch_size must be >= 2"),
        ({"method": "nope"}, "unknown method 'nope'"),
        ({"log_every": 0}, "log_every must be >= 1"),
        ({"crop_scale_min": 0.0}, "crop_scale_min"),
    ],
)
def test_a_config_built_directly_is_checked_by_the_trainer(tmp_path, bad, match):
    cfg = Config(**{**TINY, "data": str(tmp_path), "out": str(tmp_path / "run"), **bad})
    with pytest.raises(UserError, match=match):
        Trainer(cfg, show_progress=False)


def test_a_config_built_directly_trains_with_the_resolved_warmup(tmp_path, tiny_folder):
    over = {"data": str(tiny_folder), "out": str(tmp_path / "r"), "warmup_epochs": None}
    cfg = Config(**{**TINY, **over})
    tr = Trainer(cfg, show_progress=False)
    assert tr.cfg.warmup_epochs == TINY["epochs"] / 2 and cfg.warmup_epochs is None
