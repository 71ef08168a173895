"""What models declare to evaluation (map kind, Grad-CAM layer), the one attention head that VGG-att, RN-att2
and the attention on any backbone share, and the checkpoint names of a paper model (a rename fails here)."""

import pytest
import torch
from torch import nn

import ltpa
from ltpa.evaluate import gradcam_target_layer
from ltpa.evaluate._maps import map_kind
from ltpa.models import AttentionHead, AttentionModel, LTPAModel, PreActResNet

pytestmark = pytest.mark.usefixtures("single_thread")


def _plain_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


# One small model of every family: the VGGs at width 1/8, the ResNets at depth 11, two attached backbones.
FAMILIES = {
    "vgg": lambda: ltpa.create_model("vgg", width=0.125),
    "vgg_gap": lambda: ltpa.create_model("vgg_gap", width=0.125),
    "vgg_pan": lambda: ltpa.create_model("vgg_pan", width=0.125),
    "vgg_att2": lambda: ltpa.create_model("vgg_att2_concat_pc", width=0.125),
    "vgg_att3_indep": lambda: ltpa.create_model("vgg_att3_indep_dp", width=0.125),
    "resnet": lambda: PreActResNet(depth=11, width=0.125),
    "resnet_att2": lambda: PreActResNet(depth=11, width=0.125, attention_levels=(2, 3)),
    "attach_plain": lambda: ltpa.attach(_plain_cnn(), levels=(-2, -1), num_classes=10, img_size=32),
    "attach_timm": lambda: ltpa.create_model("timm/test_resnet_att2_pc", num_classes=10, img_size=32),
}
# What evaluation expected of each family before models declared it (ltpa.evaluate._maps).
EXPECTED = {
    "vgg": ("attention", "features.10"),
    "vgg_gap": ("cam", "features.4"),
    "vgg_pan": ("attention", "trunk13"),
    "vgg_att2": ("attention", "block13"),
    "vgg_att3_indep": ("attention", "block13"),
    "resnet": ("attention", "stages.2"),
    "resnet_att2": ("attention", "stages.2"),
}
ATTENTION_FAMILIES = ["vgg_att2", "vgg_att3_indep", "resnet_att2", "attach_plain", "attach_timm"]


def _build(family: str) -> LTPAModel:
    torch.manual_seed(0)
    return FAMILIES[family]().eval()


@pytest.mark.parametrize(
    "family",
    list(FAMILIES),
)
def test_models_declare_map_kind_and_gradcam_layer(family: str) -> None:
    model = _build(family)
    assert map_kind(model) == model.map_kind in ("attention", "cam")
    layer = model.gradcam_layer()
    assert gradcam_target_layer(model) is layer
    name = next(n for n, m in model.named_modules() if m is layer)
    if family in EXPECTED:
        assert (model.map_kind, name) == EXPECTED[family]
    seen: list[torch.Size] = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        with torch.no_grad():
            model(torch.rand(2, 3, 32, 32))
    finally:
        handle.remove()
    assert len(seen) == 1 and len(seen[0]) == 4 and seen[0][0] == 2  # a spatial map per image


def test_only_vgg_gap_declares_class_activation_maps() -> None:
    kinds = {family: _build(family).map_kind for family in FAMILIES}
    assert [f for f, kind in kinds.items() if kind == "cam"] == ["vgg_gap"]


def test_evaluation_falls_back_to_the_last_convolution_of_other_modules() -> None:
    net = _plain_cnn()
    assert map_kind(net) == "attention"
    assert gradcam_target_layer(net) is net[6]
    with pytest.raises(ltpa.LTPAError, match="no convolution"):
        gradcam_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


@pytest.mark.parametrize("family", ATTENTION_FAMILIES)
def test_attention_models_share_one_head(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _build(family)
    assert isinstance(model, AttentionModel)
    assert isinstance(model.head, AttentionHead)
    assert len(model.attention) == len(model.attn_info) == len(model.head.levels)
    assert model.get_classifier() is model.head.fc
    assert model.head_modules() == ["head"]

    calls: list[int] = []
    attend = AttentionModel._attend

    def counting(self: AttentionModel, local_feats: list[torch.Tensor], g: torch.Tensor):  # type: ignore[no-untyped-def]
        calls.append(len(local_feats))
        return attend(self, local_feats, g)

    monkeypatch.setattr(AttentionModel, "_attend", counting)
    with torch.no_grad():
        out = model.forward_attention(torch.rand(2, 3, 32, 32))
    assert calls == [len(model.attention)]
    assert len(out.maps) == len(out.descriptors) == len(model.attention)

    model.reset_classifier(3)
    assert model.num_classes == 3 and model.get_classifier() is model.head.fc
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)


def test_resnet_baseline_keeps_its_own_classifier() -> None:
    model = _build("resnet")
    assert model.get_classifier() is model.fc and model.head_modules() == ["fc"]
    assert not hasattr(model, "head") and not hasattr(model, "attention")
    model.reset_classifier(4)
    assert model.fc.out_features == 4 and model.num_classes == 4
    assert torch.count_nonzero(model.fc.bias) == 0  # the WRN code's zero classifier bias


# Every name outside the trunk (block7/10/13) of vgg_att2_concat_pc at width 1/8, in state-dict order, with
# its shape. Checkpoints are loaded by these names: renaming a module breaks every saved model.
ATT2_PC_HEAD_KEYS = [
    ("preprocess.fitted_flag", ()),
    ("global_path.features.1.0.weight", (64, 64, 3, 3)),
    ("global_path.features.1.0.bias", (64,)),
    ("global_path.features.1.1.weight", (64,)),
    ("global_path.features.1.1.bias", (64,)),
    ("global_path.features.1.1.running_mean", (64,)),
    ("global_path.features.1.1.running_var", (64,)),
    ("global_path.features.1.1.num_batches_tracked", ()),
    ("global_path.features.3.0.weight", (64, 64, 3, 3)),
    ("global_path.features.3.0.bias", (64,)),
    ("global_path.features.3.1.weight", (64,)),
    ("global_path.features.3.1.bias", (64,)),
    ("global_path.features.3.1.running_mean", (64,)),
    ("global_path.features.3.1.running_var", (64,)),
    ("global_path.features.3.1.num_batches_tracked", ()),
    ("global_path.fc.weight", (64, 64)),
    ("global_path.fc.bias", (64,)),
    ("attention.0.score.weight", (1, 64, 1, 1)),
    ("attention.0.score.bias", (1,)),
    ("attention.1.score.weight", (1, 64, 1, 1)),
    ("attention.1.score.bias", (1,)),
    ("head.levels.0.norm.weight", (64,)),
    ("head.levels.0.norm.bias", (64,)),
    ("head.levels.0.norm.running_mean", (64,)),
    ("head.levels.0.norm.running_var", (64,)),
    ("head.levels.0.norm.num_batches_tracked", ()),
    ("head.levels.1.norm.weight", (64,)),
    ("head.levels.1.norm.bias", (64,)),
    ("head.levels.1.norm.running_mean", (64,)),
    ("head.levels.1.norm.running_var", (64,)),
    ("head.levels.1.norm.num_batches_tracked", ()),
    ("head.fc.weight", (10, 128)),
    ("head.fc.bias", (10,)),
]


def test_state_dict_names_of_att2_pc_are_stable() -> None:
    state = ltpa.create_model("vgg_att2_concat_pc", width=0.125, num_classes=10).state_dict()
    assert len(state) == 124
    trunk = [k for k in state if k.startswith(("block7.", "block10.", "block13."))]
    assert len(trunk) == 91
    assert trunk[:3] == ["block7.0.0.weight", "block7.0.0.bias", "block7.0.1.weight"]
    assert "block13.2.0.weight" in trunk and "block10.2.1.running_var" in trunk
    rest = [(k, tuple(v.shape)) for k, v in state.items() if k not in trunk]
    assert rest == ATT2_PC_HEAD_KEYS
