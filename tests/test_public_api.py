"""Every name ``unigrad`` exports is used as its docstring and the README say (issue 22)."""

import pytest
import torch
from PIL import Image

import unigrad
from unigrad import (
    METHODS,
    AugmentSpec,
    Config,
    FastAugment,
    Mix,
    MultiViewTransform,
    Objective,
    TargetBranch,
    TargetOut,
    Trainer,
    UserError,
    ViewsDataset,
    build_model,
    cosine_momentum,
    cutmix,
    export_backbone,
    export_safetensors,
    get_method,
    load_exported_backbone,
    make_backbone,
    make_config,
    mlp,
    register,
    resnet_backbone,
)


def test_every_export_is_documented():
    for name in unigrad.__all__:
        obj = getattr(unigrad, name)
        assert name == "METHODS" or (obj.__doc__ or "").strip(), name
    assert unigrad.__version__


def _z(n=8, c=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, generator=g, requires_grad=True) for _ in range(2)]


@pytest.mark.parametrize(
    "method,form,variant", [("simclr", "loss", None), ("barlow_twins", "grad", "f")]
)
def test_drop_in_call_equals_the_full_call_shared_target(method, form, variant):
    z0, z1 = _z()
    short = Objective(method, form, variant, dim=16)(z0, z1)
    g_short = torch.autograd.grad(short, [z0, z1])
    full = Objective(method, form, variant, dim=16)([z0, z1], TargetOut([z0, z1], [z0, z1]))
    g_full = torch.autograd.grad(full, [z0, z1])
    assert torch.equal(short, full)
    assert all(torch.equal(a, b) for a, b in zip(g_short, g_full, strict=True))


def test_drop_in_call_with_momentum_targets_and_state():
    z0, z1 = _z()
    t = [x.detach() + 0.1 for x in _z(seed=1)]
    a, b = Objective("unigrad", "grad", dim=16), Objective("unigrad", "grad", dim=16)
    assert torch.equal(a(z0, z1, targets=t), b([z0, z1], TargetOut(t, t)))
    # F is a buffer: it is in the state_dict, and it moved away from its initial value
    assert torch.equal(a.state_dict()["corr.F"], b.state_dict()["corr.F"])
    assert set(a.stats) >= {"pos_sim"}
    with pytest.raises(TypeError, match="targets="):
        a(z0, z1, t)


def test_target_branch_momentum_update_and_schedule():
    enc = torch.nn.Linear(4, 3)
    target = TargetBranch("momentum", enc)
    m = cosine_momentum(0.9, 1.0, 5)
    assert m.shape == (5,) and m[0] == 0.9 and m[-1] == 1.0
    with torch.no_grad():
        enc.weight.add_(1.0)
    before = target.net.weight.clone()
    target.update(enc, float(m[0]), 1)
    assert torch.allclose(target.net.weight, 0.9 * before + 0.1 * enc.weight)
    x = [torch.randn(2, 4)]
    out = target(x, [enc(x[0])])
    assert isinstance(out, TargetOut) and not out.pos[0].requires_grad


def test_networks():
    head = mlp(32, 64, 16, depth=3)
    assert head(torch.randn(4, 32)).shape == (4, 16)
    net, feat = resnet_backbone("resnet18", 0.125, cifar_stem=True)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, feat)
    net34, feat34 = make_backbone("resnet34", 0.125, cifar_stem=True)
    assert feat34 == feat and net34(torch.randn(2, 3, 16, 16)).shape == (2, feat)
    own = build_model(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 24)), feat_dim=24
    )
    assert own([torch.randn(2, 3, 16, 16)])[0][0].shape == (2, 2048)
    model = build_model("resnet18", 0.125, True, proj_depth=2, proj_dim=16, predictor=True)
    z, p = model([torch.randn(2, 3, 16, 16)] * 2)
    assert z[0].shape == p[0].shape == (2, 16)


def test_views():
    img = Image.new("RGB", (20, 20), (120, 30, 200))
    views = MultiViewTransform(image_size=16)(img)
    assert len(views) == 2 and views[0].shape == (3, 16, 16) and views[0].dtype == torch.float32
    spec = AugmentSpec(image_size=16)
    batch = torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8)
    fast = FastAugment(spec)(batch, torch.Generator().manual_seed(0))
    assert [v.shape for v in fast] == [(4, 3, 16, 16)] * 2
    data = ViewsDataset([(img, 0), (img, 1)], spec, seed=0)
    (v0, _), label = data[1]
    assert v0.shape == (3, 16, 16) and label == 1
    mixed, perm, ratio = cutmix(fast, torch.Generator().manual_seed(0))
    obj = Objective("unigrad", "grad", dim=8)
    z = [torch.randn(4, 8, requires_grad=True) for _ in range(2)]
    t = [torch.randn(4, 8) for _ in range(2)]
    obj(z, TargetOut(t, t), mix=Mix(perm=perm, ratio=ratio)).backward()
    assert z[0].grad is not None and len(mixed) == 2


def test_registry():
    assert "unigrad" in METHODS and get_method("mocov3").name == "mocov3"
    with pytest.raises(ValueError):
        register(get_method("simclr"))  # a name that exists needs replace=True


def test_config_trainer_and_export(tiny_folder, tmp_path):
    cfg = make_config(
        "cifar-quick", data=str(tiny_folder), out=str(tmp_path / "run"), width=0.125,
        batch_size=8, max_steps=2, proj_dim=32, image_size=16, final_linear_epochs=0,
        knn_k=3, amp="off", tensorboard=False, tau=0.3, method="simclr", form="loss",
    )  # fmt: skip
    assert isinstance(cfg, Config) and cfg.hparams["tau"] == 0.3
    with pytest.raises(UserError, match="no_such_key"):
        make_config(no_such_key=1)
    with pytest.raises(UserError, match="base_lr") as e:
        make_config(base_lr="abc")
    assert "\n" not in str(e.value)  # one line, without OmegaConf's full_key/object_type lines
    trainer = Trainer(cfg, show_progress=False)
    trainer.fit()
    info = export_backbone(tmp_path / "run" / "last.ckpt", tmp_path / "backbone.pt")
    assert info.path.exists()
    export_safetensors(tmp_path / "run" / "last.ckpt", tmp_path / "backbone")
    net = load_exported_backbone(tmp_path / "backbone.safetensors")
    ref = trainer.model.encoder.backbone.eval()
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in net.state_dict().items())
    x = torch.randn(2, 3, 16, 16)  # the trainer's copy runs channels_last: equal up to round-off
    torch.testing.assert_close(net(x), ref(x), rtol=1e-4, atol=1e-5)
