"""Config: presets, overrides, unknown keys and invalid values give clear errors."""

import pytest

from unigrad.config import KEYS, build_config, load_yaml, parse_set, preset_names
from unigrad.errors import UserError


def test_shipped_presets_load_and_validate():
    assert {"cifar-quick", "paper-100ep", "paper-800ep"} <= set(preset_names())
    for name in preset_names():
        cfg = build_config(load_yaml(name))
        assert cfg.batch_size >= 2


def test_later_layers_override_earlier_ones():
    cfg = build_config(
        load_yaml("cifar-quick"), {"epochs": 7}, parse_set(["lambd=1e-3", "cutmix=true"])
    )
    assert (
        cfg.epochs == 7
        and cfg.hparams["lambd"] == 1e-3
        and cfg.cutmix is True
        and cfg.width == 0.25
    )


def test_unknown_key_lists_valid_keys_and_suggests():
    with pytest.raises(UserError) as e:
        build_config({"lamda": 1.0})
    msg = str(e.value)
    assert "lamda" in msg and "did you mean 'lambd'" in msg and all(k in msg for k in KEYS[:5])


def test_wrong_type_is_refused():
    with pytest.raises(UserError, match="epochs"):
        build_config({"epochs": "many"})


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"lambd": -1.0}, "lambd must be >= 0"),
        ({"method": "moco", "tau": 0.0}, "tau must be > 0"),
        ({"tau": 0.1}, "unigrad takes no hyperparameter tau"),
        ({"rho": 1.0}, r"rho must be in \[0, 1\)"),
        ({"batch_size": 1}, "batch_size must be >= 2"),
        ({"method": "sawv"}, "unknown method 'sawv'"),
        ({"method": "byol", "form": "grad"}, "no gradient form"),
        ({"method": "barlow_twins", "form": "grad", "variant": "z"}, "no gradient variant 'z'"),
        ({"target": "ema"}, "unknown target"),
        ({"method": "simclr", "cutmix": True}, "per-sample terms"),
        ({"method": "simclr", "multi_crop": "2x32,2x16"}, "every gradient form"),
        ({"method": "simclr", "form": "grad", "sample_set": "ema"}, "sample_set 'ema'"),
        ({"cutmix": True, "target": "stopgrad"}, "momentum or snapshot"),
        ({"symmetry": "asym", "method": "vicreg"}, "per-sample objective"),
        ({"method": "barlow_twins", "scale_loss": 0.0}, "scale_loss must be > 0"),
        ({"predictor_lr_scale": 0.0}, "predictor_lr_scale must be > 0"),
        ({"method": "moco", "predictor_lr_scale": 10.0}, "learned predictor"),
        ({"method": "vicreg", "scale_loss": 0.5}, "vicreg takes no hyperparameter scale_loss"),
    ],
)
def test_invalid_values_are_refused_with_the_reason(bad, match):
    with pytest.raises(UserError, match=match):
        build_config(bad)


def test_set_parses_yaml_scalars():
    assert parse_set(["a=1", "b=0.5", "c=true", "d=null", "e=x"]) == {
        "a": 1,
        "b": 0.5,
        "c": True,
        "d": None,
        "e": "x",
    }
    with pytest.raises(UserError, match="key=value"):
        parse_set(["novalue"])


def test_missing_preset_names_the_shipped_ones(tmp_path):
    with pytest.raises(UserError, match="cifar-quick"):
        load_yaml("nope")
    with pytest.raises(UserError, match="does not exist"):
        load_yaml(str(tmp_path / "x.yaml"))


def test_method_defaults_reach_only_their_method_and_give_way(capsys):
    quick = load_yaml("cifar-quick")
    assert build_config(quick).hparams == {"corr_source": "online"}  # UniGrad: BENCHMARKS 5
    assert build_config(quick, {"method": "simclr"}).hparams == {}
    assert build_config(quick, {"corr_source": "target"}).hparams == {"corr_source": "target"}
    # a later layer's block wins, key by key (the grids pin the released choice this way)
    pinned = {"method_defaults": {"unigrad": {"corr_source": "target"}}}
    assert build_config(quick, pinned).hparams == {"corr_source": "target"}
    # CutMix needs F from unmixed embeddings: the preset's default gives way, with a note
    capsys.readouterr()
    assert build_config(quick, {"cutmix": True}).hparams == {}
    assert "method_defaults corr_source=online does not fit" in capsys.readouterr().err
    with pytest.raises(UserError, match="cutmix needs corr_source=target"):
        build_config(quick, {"cutmix": True, "corr_source": "online"})


def test_method_defaults_set_optimiser_keys_unless_a_later_layer_does():
    """cifar-quick gives UniGrad weight decay 2e-3 (issue 37): over the preset's own 5e-4,
    under a later layer's value, and never to another method."""
    quick = load_yaml("cifar-quick")
    assert quick["weight_decay"] == 5.0e-4
    assert build_config(quick).weight_decay == 2.0e-3
    assert build_config(quick, {"method": "simclr"}).weight_decay == 5.0e-4
    assert build_config(quick, {"weight_decay": 1e-4}).weight_decay == 1e-4
    pinned = {"method_defaults": {"unigrad": {"weight_decay": 5.0e-4}}}
    assert build_config(quick, pinned).weight_decay == 5.0e-4
    with pytest.raises(UserError, match="has no hyperparameter 'width'"):
        build_config(quick, {"method_defaults": {"unigrad": {"width": 1.0}}})
    with pytest.raises(UserError, match="unknown method 'unigard'"):
        build_config({"method_defaults": {"unigard": {"rho": 0.9}}})
    with pytest.raises(UserError, match="simclr has no hyperparameter 'rho'"):
        build_config({"method_defaults": {"simclr": {"rho": 0.9}}})
