"""Attention on timm, torchvision and plain backbones (ltpa.models.attach) against the model contract and
method §1.4 and §1.7. Backbones are randomly initialised: nothing is downloaded."""

import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

import ltpa
import ltpa.cli
from ltpa.checkpoint import load_model, save_checkpoint
from ltpa.errors import LTPAError
from ltpa.models.attach import AttnBackbone, capture_outputs, find_stages

IMG = 64


def _plain_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


# (how to build, compatibility): three timm families, a torchvision model, a timm classifier, a plain module.
CASES = {
    "timm-resnet": (lambda: ltpa.create_model("timm/test_resnet_att2_pc", num_classes=5, img_size=IMG), "pc"),
    "timm-convnext": (
        lambda: ltpa.create_model("timm/test_convnext_att3_indep_dp", num_classes=5, img_size=IMG),
        "dp",
    ),
    "timm-efficientnet": (
        lambda: ltpa.create_model(
            "timm/test_efficientnet_att2_add", num_classes=5, img_size=IMG, global_dim=24
        ),
        "add",
    ),
    "torchvision-resnet18": (
        lambda: ltpa.create_model("tv/resnet18_att2_pc", num_classes=5, img_size=IMG),
        "pc",
    ),
    "timm-classifier": (
        lambda: ltpa.attach(
            timm.create_model("test_convnext"),
            levels=("stages.2", -1),
            compatibility="dp",
            num_classes=5,
            img_size=IMG,
        ),
        "dp",
    ),
    "plain-hooks": (lambda: ltpa.attach(_plain_cnn(), levels=(-2, -1), num_classes=5, img_size=IMG), "pc"),
}


def _global_path(model: AttnBackbone) -> list[nn.Parameter]:
    params = list(model.global_fc.parameters()) if model.global_fc is not None else []
    for attn in model.attention:
        params += [p for m in (attn.global_proj, attn.global_key) if m is not None for p in m.parameters()]
    return params


@pytest.mark.parametrize("case", list(CASES))
def test_contract(case):
    build, compat = CASES[case]
    torch.manual_seed(0)
    model = build().train()
    with torch.no_grad():  # scores start at zero (uniform maps); make the maps non-trivial
        for attn in model.attention:
            if attn.score is not None:
                attn.score.weight.normal_(0.0, 0.1)
    x = torch.rand(2, 3, IMG, IMG)
    out = model.forward_attention(x)
    assert out.logits.shape == (2, 5) and torch.isfinite(out.logits).all()
    assert len(out.maps) == len(out.descriptors) == len(model.attn_info) >= 2
    strides = [info["stride"] for info in model.attn_info]
    assert strides == sorted(strides), "levels are ordered shallowest first"
    for info, a, d in zip(model.attn_info, out.maps, out.descriptors):
        side = IMG // info["stride"]
        assert a.shape == (2, side, side)
        assert d.shape == (2, info["descriptor"])
        assert torch.allclose(a.flatten(1).sum(1), torch.ones(2), atol=1e-5)  # softmax over positions
        assert (a >= 0).all()
    feats = model.forward_features(x)
    assert feats.shape[:2] == (2, model.global_info["channels"]) and feats.dim() == 4
    width = sum(i["descriptor"] for i in model.attn_info)
    assert model.forward_head(feats, pre_logits=True).shape == (2, width) == (2, model.num_features)
    with torch.no_grad():  # timm's contract: the head of forward_features' output is forward
        torch.testing.assert_close(model.eval().forward_head(model.forward_features(x)), model(x))
    model.train()

    out.logits.logsumexp(1).sum().backward()
    backbone = list(model.backbone.parameters())
    used = [p for p in backbone if p.grad is not None]
    if case == "plain-hooks":  # the module's own classifier runs but is not used
        assert len(used) == len(backbone) - 2
    else:
        assert len(used) == len(backbone)
    assert all(torch.isfinite(p.grad).all() for p in used)
    # Gradients reach the first layer. (Some inner ones are exactly zero at initialisation, e.g. the convs in
    # front of timm's zero-initialised last BN of each residual block.)
    assert backbone[0].grad.abs().sum() > 0
    for p in list(model.attention.parameters()) + list(model.head.parameters()):
        assert p.grad is not None
    glob = _global_path(model)
    if compat == "pc":  # method §1.7: g cancels in the softmax, so the global path gets exactly zero gradient
        assert all(float(p.grad.abs().max()) == 0.0 for p in glob)
    else:
        assert any(float(p.grad.abs().max()) > 0 for p in glob)

    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), model.forward_attention(x).logits)


@pytest.mark.parametrize("backend", ["own", "package"])
@pytest.mark.parametrize("case", list(CASES))
def test_grad_cam_explains_the_global_level_of_every_backbone(case, backend):
    # torchvision backbones run as one traced graph whose stage modules never run themselves: Grad-CAM used
    # to hook such a module and fail ("'NoneType' object has no attribute 'shape'")
    from ltpa.evaluate import compute_maps
    from ltpa.evaluate._maps import grad_cam, gradcam_target_layer

    torch.manual_seed(0)
    model = CASES[case][0]().eval()
    x = torch.rand(2, 3, IMG, IMG)
    cams = [grad_cam(model, x, torch.full((2,), k), backend=backend) for k in range(5)]
    assert all(cam.shape == (2, IMG, IMG) and torch.isfinite(cam).all() for cam in cams)
    assert max(float(cam.amax()) for cam in cams) > 0.5  # scaled to [0, 1]; a class may explain nothing
    layer = gradcam_target_layer(model)
    name = next(n for n, m in model.named_modules() if m is layer)
    with capture_outputs(model, [name]) as outputs:
        final = model.forward_features(x)
    torch.testing.assert_close(outputs[name], final)  # the layer's output is the global level's map
    maps = compute_maps(model, (x * 255).to(torch.uint8), gradcam=True, gradcam_backend=backend)
    assert any(kind == "gradcam" for kind, _ in maps)


@pytest.mark.parametrize("compat", ["pc", "dp"])
def test_global_feature_only_matters_for_dp(compat):
    torch.manual_seed(0)
    model = ltpa.attach(
        _plain_cnn(), levels=(0, 1), compatibility=compat, num_classes=3, img_size=32, global_dim=8
    )
    model.eval()
    with torch.no_grad():
        for attn in model.attention:  # non-zero pc scores, so the maps are not uniform
            if attn.score is not None:
                attn.score.weight.normal_()
        x = torch.rand(2, 3, 32, 32)
        before = model.forward_attention(x)
        model.global_fc.weight.normal_()
        after = model.forward_attention(x)
    same = all(torch.allclose(a, b, atol=1e-6) for a, b in zip(before.maps, after.maps))
    assert same == (compat == "pc")  # method §1.7 items 1 and 3
    assert not torch.allclose(before.maps[0], torch.full_like(before.maps[0], before.maps[0].mean()))


def test_attention_starts_as_average_pooling():
    model = ltpa.create_model("timm/test_resnet_att2_pc", num_classes=3, img_size=IMG).eval()
    out = model.forward_attention(torch.rand(1, 3, IMG, IMG))
    for a in out.maps:
        assert torch.allclose(a, torch.full_like(a, 1.0 / a[0].numel()))


def test_torchvision_stages_and_levels_by_name():
    resnet = torchvision.models.resnet18()
    names = [s["name"] for s in find_stages(resnet, IMG)]
    assert names == ["relu", "layer1", "layer2", "layer3", "layer4"]
    model = ltpa.attach(resnet, levels=["layer4", "layer2"], num_classes=4, img_size=IMG)
    assert [i["name"] for i in model.attn_info] == ["layer2", "layer4"]
    assert [(i["channels"], i["stride"]) for i in model.attn_info] == [(128, 8), (512, 32)]
    assert model.global_info["name"] == "layer4"
    assert not any(k.startswith("backbone.graph.fc") for k in model.state_dict()), "the head is cut off"
    assert model.preprocess.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])


def test_hooks_exist_only_during_forward():
    net = _plain_cnn()
    model = ltpa.attach(net, levels=(-2, -1), num_classes=3, img_size=32)
    model(torch.rand(2, 3, 32, 32))
    assert not any(m._forward_hooks for m in net.modules())
    with pytest.raises(RuntimeError), capture_outputs(net, ["3"]):
        assert net[3]._forward_hooks
        net(torch.rand(2, 5, 32, 32))  # wrong channel count: the error propagates, the hook is removed
    assert not any(m._forward_hooks for m in net.modules())


def test_bad_levels_and_names_raise_ltpa_errors():
    with pytest.raises(LTPAError, match="out of range"):
        ltpa.attach(_plain_cnn(), levels=(7,), num_classes=3, img_size=32)
    with pytest.raises(LTPAError, match="no tappable layer 'nope'"):
        ltpa.attach(_plain_cnn(), levels=("nope",), num_classes=3, img_size=32)
    with pytest.raises(LTPAError, match="same layer twice"):
        ltpa.attach(_plain_cnn(), levels=(-1, 2), num_classes=3, img_size=32)
    with pytest.raises(LTPAError, match="resnet50"):
        ltpa.create_model("timm/resnet5O_att2_pc")
    with pytest.raises(LTPAError, match="names look like timm/<backbone>_att<N>"):
        ltpa.create_model("timm/resnet50")
    with pytest.raises(LTPAError, match="torchvision has no model"):
        ltpa.create_model("tv/resnet19_att2_pc")
    with pytest.raises(LTPAError, match="levels is fixed by the model name"):
        ltpa.create_model("timm/test_resnet_att2_pc", levels=(1,))
    with pytest.raises(LTPAError, match="out of range"):
        ltpa.create_model("timm/test_convnext_att5_pc", img_size=IMG)
    for name in ("tv/resnet18_att2_pc", "timm/test_resnet_att2_pc"):
        with pytest.raises(LTPAError, match="width does not apply"):
            ltpa.create_model(name, width=0.5)


def test_width_on_a_backbone_model_is_a_one_line_cli_error(tmp_path, capsys):
    args = ["train", "--model", "tv/resnet18_att2_pc", "--width", "0.5", "--dry-run"]
    assert ltpa.cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "drop --width" in err


def test_pretrained_weights_are_only_read_from_local_files(tmp_path, monkeypatch):
    import huggingface_hub.constants

    hf_cache = tmp_path / "hf"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(LTPAError, match="no local pretrained weights for timm model 'test_resnet'"):
        ltpa.create_model("timm/test_resnet_att2_pc", pretrained=True)
    with pytest.raises(LTPAError, match="no local pretrained weights for torchvision model 'resnet18'"):
        ltpa.create_model("tv/resnet18_att2_pc", pretrained=True)

    # Weights laid out as the Hugging Face cache holds a download of timm/test_resnet.r160_in1k.
    torch.manual_seed(1)
    source = timm.create_model("test_resnet")
    repo = hf_cache / "models--timm--test_resnet.r160_in1k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file(source.state_dict(), str(snapshot / "model.safetensors"))
    model = ltpa.create_model("timm/test_resnet_att2_pc", num_classes=3, pretrained=True)
    assert torch.equal(model.backbone.net.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    assert "pretrained" not in model.model_kwargs  # a checkpoint rebuilds without the ImageNet weights

    file = tmp_path / "mine.safetensors"
    save_file(source.state_dict(), str(file))
    model = ltpa.create_model("timm/test_resnet_att2_pc", num_classes=3, pretrained=str(file))
    assert torch.equal(model.backbone.net.conv1[0].weight, source.conv1[0].weight)
    with pytest.raises(LTPAError, match="does not exist"):
        ltpa.create_model("timm/test_resnet_att2_pc", pretrained=str(tmp_path / "missing.pth"))


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ltpa.create_model("timm/test_convnext_att2_indep_pc", num_classes=3, img_size=IMG, drop_rate=0.0)
    save_checkpoint(tmp_path / "last", model, epoch=1)
    loaded = load_model(tmp_path)
    x = torch.rand(2, 3, IMG, IMG)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model.eval()(x), atol=1e-6)
    assert isinstance(loaded.get_classifier(), nn.ModuleList) and loaded.num_classes == 3
    loaded.reset_classifier(7)
    assert loaded(x).shape == (2, 7) and loaded.get_classifier()[0].out_features == 7


def test_trains_on_cluttered_digits():
    from ltpa.data import build_dataset

    data = build_dataset("cluttered-digits", split="train", num_train=64, num_test=32)
    items = [data[i] for i in range(32)]  # (uint8 image (3, 32, 32), label, bool mask)
    images = torch.stack([img for img, _, _ in items]).float() / 255.0
    labels = torch.tensor([int(label) for _, label, _ in items])
    torch.manual_seed(0)
    model = ltpa.create_model("timm/test_resnet_att3_pc", num_classes=10, img_size=32, preprocess="none")
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(10):
        loss = nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.5 * losses[0]


@pytest.mark.slow
def test_readme_attach_snippet_runs_offline():
    # its pretrained=True ended offline in a long huggingface_hub traceback
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Attention on any CNN", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code[1]], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        "torch.Size([2, 200])" in proc.stdout
        and "[torch.Size([2, 14, 14]), torch.Size([2, 7, 7])]" in proc.stdout
    )


def test_train_pretrained_starts_a_backbone_from_its_cached_imagenet_weights(tmp_path, monkeypatch, capsys):
    from ltpa.config import resolve_config
    from ltpa.train import build_model

    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    flags = ["train", "--model", "tv/resnet18_att2_pc", "--pretrained", "--dry-run"]
    assert ltpa.cli.main(flags) == 2  # nothing cached: one line on how to fetch the weights once
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1 and "no local pretrained weights for torchvision model 'resnet18'" in err
    )
    # the weights torchvision would have downloaded, in its cache
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    imagenet = torchvision.models.resnet18().state_dict()
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(imagenet, hub / "checkpoints" / url.rsplit("/", 1)[1])
    assert ltpa.cli.main(flags) == 0
    assert "pretrained: true" in capsys.readouterr().out
    cfg = resolve_config(overrides={"model": "tv/resnet18_att2_pc", "model_kwargs": {"pretrained": True}})
    model = build_model(cfg, num_classes=10, img_size=32)
    conv1 = next(v for k, v in model.state_dict().items() if k.endswith("conv1.weight"))
    torch.testing.assert_close(conv1, imagenet["conv1.weight"])
    assert "pretrained" not in model.model_kwargs  # a checkpoint of it loads without the ImageNet weights
    assert ltpa.cli.main(["train", "--model", "vgg", "--pretrained", "--dry-run"]) == 2
    assert "--pretrained loads the ImageNet weights of timm/ and tv/" in capsys.readouterr().err
