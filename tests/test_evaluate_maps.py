"""Maps of models and baselines: attention, CAM, Grad-CAM (own implementation and the grad-cam package)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from ltpa import create_model
from ltpa.errors import LTPAError
from ltpa.evaluate import (
    class_activation_maps,
    compute_maps,
    gaussian_prior,
    grad_cam,
    gradcam_backend,
    gradcam_target_layer,
    upsample,
)

pytestmark = pytest.mark.usefixtures("single_thread")

NAMES = ["vgg_att2_concat_pc", "vgg_att3_concat_dp", "vgg", "vgg_gap", "vgg_pan"]


def tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, width=0.0625, num_classes=5, img_size=16).eval()


@pytest.mark.parametrize("name", NAMES)
def test_gradcam_target_layer_is_the_last_trunk_block(name: str) -> None:
    model = tiny(name)
    layer = gradcam_target_layer(model)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model(torch.rand(2, 3, 16, 16))
    handle.remove()
    assert len(seen) == 1 and len(seen[0]) == 4
    # conv13: 16 / 4 = 4 in the attention trunk; the baseline VGG pools four times before it (16 / 16)
    assert seen[0][-1] == (1 if name == "vgg" else 4)


@pytest.mark.parametrize("name", ["vgg_att2_concat_pc", "vgg"])
def test_own_gradcam_leaves_the_model_as_it_was(name: str) -> None:
    model = tiny(name).train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    layer = gradcam_target_layer(model)
    cam = grad_cam(model, torch.rand(3, 3, 16, 16), backend="own")
    assert cam.shape == (3, 16, 16) and cam.min() >= 0 and cam.max() <= 1
    assert model.training
    assert all(torch.all(p.grad == 7.0) for p in model.parameters())
    assert not layer._forward_hooks


def test_own_gradcam_removes_its_hook_when_the_forward_fails() -> None:
    model = tiny("vgg")
    layer = gradcam_target_layer(model)
    with pytest.raises(ValueError):
        grad_cam(model, torch.rand(2, 1, 16, 16), classes=torch.tensor([0, 1]), backend="own")  # 1 channel
    assert not layer._forward_hooks


@pytest.mark.skipif(importlib.util.find_spec("pytorch_grad_cam") is None, reason="grad-cam not installed")
@pytest.mark.parametrize("name", ["vgg_att2_concat_pc", "vgg_gap"])
def test_own_gradcam_agrees_with_the_grad_cam_package(name: str) -> None:
    model = tiny(name)
    x = torch.rand(4, 3, 16, 16)
    classes = torch.tensor([0, 1, 2, 3])
    ours = grad_cam(model, x, classes, backend="own")
    theirs = grad_cam(model, x, classes, backend="package")
    assert torch.allclose(ours, theirs, atol=1e-4)
    assert gradcam_backend("auto") == "package"
    assert not gradcam_target_layer(model)._forward_hooks


def test_gradcam_backend_names() -> None:
    with pytest.raises(LTPAError, match="unknown Grad-CAM backend"):
        gradcam_backend("magic")
    assert gradcam_backend("own") == "own"


def test_compute_maps_names_levels_and_upsamples() -> None:
    model = tiny("vgg_att2_concat_pc")
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    maps = compute_maps(model, images, size=24, batch_size=2, gradcam=True, gradcam_backend="own")
    # Grad-CAM of conv13 is named as the attention map of conv13 is, not by its module (block13)
    assert set(maps) == {("attention", "conv10"), ("attention", "conv13"), ("gradcam", "conv13")}
    assert all(m.shape == (5, 24, 24) for m in maps.values())
    raw = model.forward_attention(images.float() / 255).maps
    assert torch.allclose(maps[("attention", "conv13")], upsample(raw[1], 24), atol=1e-6)
    gap = compute_maps(tiny("vgg_gap"), images)
    assert set(gap) == {("cam", "conv13")}
    assert compute_maps(tiny("vgg"), images) == {}


def test_cam_is_the_classifier_weighted_channel_sum() -> None:
    model = tiny("vgg_gap")
    x = torch.rand(2, 3, 16, 16)
    classes = torch.tensor([1, 3])
    cam = class_activation_maps(model, x, classes)
    fmap = model.features(x)
    expected = torch.einsum("bc,bchw->bhw", model.fc.weight[classes], fmap)
    assert torch.allclose(cam, expected, atol=1e-5)
    with pytest.raises(LTPAError, match="vgg_gap"):
        class_activation_maps(tiny("vgg"), x)


def test_gaussian_prior_peaks_at_the_centre() -> None:
    prior = gaussian_prior(9, 2, sigma=0.2)
    assert prior.shape == (2, 9, 9) and prior[0, 4, 4] == 1.0
    assert torch.equal(prior[0], prior[0].T) and torch.equal(prior[0], prior[0].flip(0))
    with pytest.raises(LTPAError):
        gaussian_prior(9, sigma=0.0)


@pytest.mark.parametrize(
    ("name", "level"),
    [("vgg", "conv13"), ("vgg_gap", "conv13"), ("vgg_pan", "conv13"), ("vgg_att3_concat_pc", "conv13"),
     ("resnet164", "stage3"), ("resnet164_att2_concat_pc", "stage3"), ("tv/resnet18_att2_pc", "layer4")],
)  # fmt: skip
def test_gradcam_maps_carry_the_layer_names_of_the_attention_maps(name, level) -> None:
    import ltpa
    from ltpa.evaluate._maps import gradcam_level_name

    kwargs = {"num_classes": 3, "img_size": 32} | ({} if "/" in name else {"width": 0.125})
    model = ltpa.create_model(name, **kwargs)
    assert gradcam_level_name(model) == level
    attended = [d["name"] for d in getattr(model, "attn_info", [])]
    assert not attended or level == attended[-1]  # the deepest attended level, where there is one
