"""The model zoo against the specification (method §2, §2.6, §3.3, §3.6 and §7)."""

import pytest
import torch

import ltpa
import ltpa.cli
from ltpa.errors import LTPAError
from ltpa.models import model_info

# method §2.6: (model name, kwargs, {K: parameter count}), derived from the official code's layer definitions
# (the paper gives no counts for most of these models).
OFFICIAL_COUNTS = [
    ("vgg", {}, {10: 14_991_946, 100: 15_038_116, 200: 15_089_416}),
    ("vgg_att2_concat_pc", {}, {10: 19_720_780, 100: 19_813_030, 200: 19_915_530}),
    ("vgg_att2_concat_dp", {}, {10: 19_719_754, 100: 19_812_004}),
    ("vgg_att2_indep_pc", {}, {10: 19_720_790, 100: 19_813_130}),
    ("vgg_att3_concat_pc", {}, {10: 19_856_461, 100: 19_971_751, 200: 20_099_851}),
    ("vgg_att3_concat_pc", {"match": "local"}, {10: 19_860_045, 100: 19_998_375}),
    ("resnet164", {}, {10: 1_703_258, 100: 1_726_388}),
    ("resnet164_att2_concat_pc", {}, {10: 2_395_484, 100: 2_430_134}),
]
CASES = [(n, kw, k, count) for n, kw, counts in OFFICIAL_COUNTS for k, count in counts.items()]


@pytest.mark.parametrize("name,kwargs,k,count", CASES)
def test_parameter_counts_match_the_official_layer_definitions(name, kwargs, k, count):
    img_size = 80 if k == 200 else 32
    assert model_info(name, num_classes=k, img_size=img_size, **kwargs)["params"] == count


# method §2.6: parameters of pc models that the loss never reaches (the global path, method §1.7 item 2)
UNTRAINED_COUNTS = [
    ("vgg_att3_concat_pc", {}, 5_116_672),
    ("vgg_att3_concat_pc", {"match": "local"}, 4_985_344),
]


@pytest.mark.parametrize("name,kwargs,untrained", UNTRAINED_COUNTS)
def test_parameters_trained_by_the_loss_match_the_method(name, kwargs, untrained):
    torch.manual_seed(0)
    model = ltpa.create_model(name, num_classes=10, img_size=32, **kwargs).train()
    torch.nn.functional.cross_entropy(model(torch.rand(4, 3, 32, 32)), torch.arange(4)).backward()
    dead = sum(p.numel() for p in model.parameters() if p.grad is None or not bool(p.grad.ne(0).any()))
    assert dead == untrained


def test_registry_has_every_paper_name():
    names = set(ltpa.list_models())
    expected = {"vgg", "vgg_gap", "vgg_pan", "resnet164"}
    expected |= {f"vgg_att{n}_{c}_{p}" for n in (1, 2, 3) for c in ("concat", "indep") for p in ("pc", "dp")}
    expected |= {f"resnet164_att2_{c}_{p}" for c in ("concat", "indep") for p in ("pc", "dp")}
    assert expected <= names


def test_unknown_model_lists_close_matches():
    with pytest.raises(LTPAError, match="vgg_att2_concat_pc"):
        ltpa.create_model("vgg_att2_concat_pcc")


def _small(name, **kwargs):
    kwargs.setdefault("width", 0.125)
    return ltpa.create_model(name, **kwargs)


ALL_MODELS = ltpa.list_models()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_contract_forward_backward_32(name):
    torch.manual_seed(0)
    model = _small(name).train()
    x = torch.rand(2, 3, 32, 32)
    out = model.forward_attention(x)
    assert out.logits.shape == (2, 10)
    assert len(out.maps) == len(model.attn_info) == len(out.descriptors)
    for info, a, d in zip(model.attn_info, out.maps, out.descriptors):
        side = round(32 / info["stride"])
        assert a.shape == (2, side, side)
        assert d.shape == (2, info["descriptor"])
    out.logits.sum().backward()
    # every parameter takes part (the pc global path too, with an exactly zero gradient: method §1.7)
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    torch.testing.assert_close(model.forward_attention(x).logits, model(x))
    assert model(x[:1]).shape == (1, 10)  # batch size 1 in eval mode
    assert model.forward_features(x).dim() == 4 and model.forward_features(x).shape[0] == 2


@pytest.mark.parametrize("name", ["vgg", "vgg_gap", "vgg_pan", "vgg_att2_concat_pc", "vgg_att3_concat_pc"])
def test_cub_variants_run_at_80(name):
    model = _small(name, num_classes=200, img_size=80).train()
    out = model.forward_attention(torch.rand(2, 3, 80, 80))
    assert out.logits.shape == (2, 200)
    out.logits.sum().backward()
    # the CUB layout brings conv10 to 16x16 and conv13 to 8x8 as in the CIFAR models (method §2.3)
    if name.startswith("vgg_att"):
        assert [tuple(a.shape[1:]) for a in out.maps][-2:] == [(16, 16), (8, 8)]
    if name == "vgg_att3_concat_pc":
        assert out.maps[0].shape[1:] == (32, 32)


@pytest.mark.parametrize("name", ["vgg_att1_concat_pc", "vgg_att3_concat_pc", "vgg_att2_indep_pc"])
def test_softmax_maps_are_distributions_at_paper_strides(name):
    model = _small(name).eval()
    maps = model.forward_attention(torch.rand(3, 3, 32, 32)).maps
    assert [info["stride"] for info in model.attn_info] == [1, 2, 4][-len(maps) :]
    for a in maps:
        assert (a >= 0).all()
        torch.testing.assert_close(a.sum(dim=(1, 2)), torch.ones(3))


def _replace_global(model, value):
    path = model.global_path
    return path.register_forward_hook(lambda mod, inp, out: torch.full_like(out, value))


@pytest.mark.parametrize("name", ["vgg_att3_concat_pc", "resnet164_att2_concat_pc", "vgg_att2_indep_pc"])
def test_pc_softmax_is_independent_of_global_feature(name):
    model = _small(name).eval()
    x = torch.rand(2, 3, 32, 32)
    ref = model.forward_attention(x)
    handle = _replace_global(model, 7.0)
    out = model.forward_attention(x)
    handle.remove()
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=0)
    for a, b in zip(out.maps, ref.maps):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["vgg_att3_concat_pc", "resnet164_att2_indep_pc"])
def test_pc_global_path_gets_exactly_zero_gradient(name):
    model = _small(name).train()
    x = torch.rand(4, 3, 32, 32)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    global_params = list(model.global_path.parameters())
    global_params += [
        p for m in model.attention if m.global_proj is not None for p in m.global_proj.parameters()
    ]
    assert global_params
    for p in global_params:
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0
    trunk = model.block7 if hasattr(model, "block7") else model.stem
    assert any(torch.count_nonzero(p.grad) > 0 for p in trunk.parameters())


@pytest.mark.parametrize("name", ["vgg_att2_concat_dp", "vgg_att2_concat_add", "resnet164_att2_concat_dp"])
def test_dp_and_add_depend_on_global_feature(name):
    model = _small(name).eval()
    x = torch.rand(2, 3, 32, 32)
    ref = model.forward_attention(x).maps
    handle = _replace_global(model, 0.5)
    out = model.forward_attention(x).maps
    handle.remove()
    assert not all(torch.allclose(a, b) for a, b in zip(out, ref))


def test_indep_modes_mean_and_product():
    torch.manual_seed(0)
    mean = _small("vgg_att2_indep_pc").eval()
    prod = _small("vgg_att2_indep_pc", indep_mode="product").eval()
    prod.load_state_dict(mean.state_dict())
    x = torch.rand(2, 3, 32, 32)
    feats = mean.forward_head(mean.forward_features(x), pre_logits=True)
    parts = torch.split(feats, mean.head.channels, dim=1)
    probs = [torch.softmax(fc(p), 1) for fc, p in zip(mean.head.fc, parts)]
    torch.testing.assert_close(torch.softmax(mean(x), 1), (probs[0] + probs[1]) / 2)
    torch.testing.assert_close(
        torch.log_softmax(prod(x), 1), torch.log_softmax(probs[0].log() + probs[1].log(), 1)
    )


def test_grad_averaging_halves_trunk_gradients_of_att1_pc():
    # att1-pc: conv13 feeds the global path (zero gradient, method §1.7) and the attention; averaging at that
    # branch point (method §3.3) must halve every gradient below it exactly.
    torch.manual_seed(0)
    plain = _small("vgg_att1_concat_pc").eval()
    avg = _small("vgg_att1_concat_pc", grad_averaging=True).eval()
    avg.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 32, 32)
    plain(x).square().sum().backward()
    avg(x).square().sum().backward()
    for p, q in zip(plain.block7.parameters(), avg.block7.parameters()):
        torch.testing.assert_close(q.grad, p.grad * 0.5)
    for p, q in zip(plain.head.parameters(), avg.head.parameters()):
        torch.testing.assert_close(q.grad, p.grad)


def test_official_initialisation():
    model = ltpa.create_model("vgg_att2_concat_pc")
    conv = model.attention[0].score  # 1x1 conv C -> 1: std sqrt(2 / (1*1*1))
    assert conv.bias.abs().sum() == 0
    big = model.block10[0][0]  # 3x3 conv 256 -> 512: std sqrt(2 / (9 * 512))
    assert abs(big.weight.std().item() - (2 / (9 * 512)) ** 0.5) < 2e-4
    bn = model.block10[0][1]
    assert bn.eps == 1e-3 and bn.weight.min() >= 0 and bn.weight.max() <= 1
    fc = model.head.fc
    assert fc.weight.abs().max() <= 1 / fc.in_features**0.5


def test_gap_cam_is_classifier_weighted_feature_map():
    model = _small("vgg_gap").eval()
    x = torch.rand(2, 3, 32, 32)
    out = model.forward_attention(x)
    cam = model.cam(x, out.logits.argmax(1))
    torch.testing.assert_close(out.maps[0], cam)
    # the spatial mean of the CAM plus the bias is the logit of that class
    pred = out.logits.argmax(1)
    logit = out.logits.gather(1, pred[:, None]).squeeze(1)
    torch.testing.assert_close(cam.mean(dim=(1, 2)) + model.fc.bias[pred], logit)


def test_reset_classifier_keeps_trunk():
    model = _small("vgg_att2_concat_pc", num_classes=100).eval()
    trunk = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.fc")}
    model.reset_classifier(200)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 200)
    for k, v in trunk.items():
        torch.testing.assert_close(model.state_dict()[k], v)


def test_bad_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        _small("vgg")(torch.rand(2, 1, 32, 32))


def test_models_command_lists_every_model(capsys):
    assert ltpa.cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ltpa.list_models():
        assert name in out
    assert "19,720,780" in out


# timm's conventions (CONTRIBUTING.md §3): the paper models at width 1/8, and the smallest timm and
# torchvision backbones that tests/test_attach.py uses, at 64x64.
SMALL_FAMILY = ["timm/test_resnet_att2_pc", "timm/test_convnext_att3_indep_dp", "tv/resnet18_att2_pc"]


def _small_any(name, **kwargs):
    if "/" in name:
        return ltpa.create_model(name, num_classes=10, img_size=64, **kwargs)
    return _small(name, **kwargs)


@pytest.mark.parametrize("name", ALL_MODELS + SMALL_FAMILY)
def test_forward_head_of_forward_features_is_forward(name):
    torch.manual_seed(0)
    model = _small_any(name).eval()
    with torch.no_grad():  # non-uniform maps where attention starts uniform (attach.py)
        for attn in getattr(model, "attention", []):
            if getattr(attn, "score", None) is not None:
                attn.score.weight.normal_(0.0, 0.1)
    side = model.img_size
    x = torch.rand(2, 3, side, side)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.dim() == 4 and feats.shape[0] == 2  # the unpooled trunk map, as timm's
        torch.testing.assert_close(model.forward_head(feats), model(x))
        pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, model.num_features)
    classifier = model.get_classifier()
    if isinstance(classifier, torch.nn.Linear):  # concat heads: the classifier of the pre-logits is forward
        torch.testing.assert_close(classifier(pre), model(x))


@pytest.mark.parametrize(
    "name", ["vgg_att3_concat_pc", "resnet164_att2_indep_dp", "timm/test_resnet_att2_pc"]
)
def test_forward_head_needs_the_levels_forward_features_carries(name):
    model = _small_any(name, **({} if "/" in name else {"img_size": 32})).eval()
    feats = model.forward_features(torch.rand(1, 3, model.img_size, model.img_size))
    assert len(feats.levels) == len(model.attn_info) - 1  # the deepest level is the tensor itself
    with pytest.raises(LTPAError, match="pass forward_features' output unchanged"):
        model.forward_head(feats * 1.0)  # an operation returns a plain tensor without the levels


@pytest.mark.parametrize("name", ALL_MODELS + SMALL_FAMILY)
def test_pretrained_cfg_and_classifier_of_every_family(name):
    model = _small_any(name, num_classes=7) if "/" not in name else _small_any(name)
    cfg = model.pretrained_cfg
    expected = {
        "input_size",
        "mean",
        "std",
        "preprocess",
        "num_classes",
        "classes",
        "license",
        "code_license",
    }
    assert expected <= set(cfg)
    assert cfg["input_size"] == (3, model.img_size, model.img_size)
    assert cfg["num_classes"] == model.num_classes and cfg["architecture"] == name
    assert cfg["mean"] == (0.0, 0.0, 0.0) and cfg["std"] == (1.0, 1.0, 1.0)  # normalisation is inside
    assert cfg["license"] == "unknown" and cfg["code_license"] == "MIT"
    assert model.default_cfg == cfg
    assert isinstance(model.get_classifier(), torch.nn.Linear | torch.nn.ModuleList)
    width = model.num_features
    model.reset_classifier(3)
    assert model.num_classes == 3 and model.num_features == width
    assert model.pretrained_cfg["num_classes"] == 3
    x = torch.rand(2, 3, model.img_size, model.img_size)
    assert model.eval()(x).shape == (2, 3)


def test_create_model_pretrained_and_checkpoint_path_misuse(tmp_path):
    with pytest.raises(LTPAError, match="no published weights for vgg_att2_concat_pc yet"):
        ltpa.create_model("vgg_att2_concat_pc", pretrained=True)
    with pytest.raises(LTPAError, match="neither a pretrained folder"):
        ltpa.create_model("vgg", pretrained=str(tmp_path / "missing"))
    with pytest.raises(LTPAError, match="pretrained must be False, True"):
        ltpa.create_model("vgg", pretrained=1.5)
    with pytest.raises(LTPAError, match="unknown model"):
        ltpa.create_model("vgg_att2_concat_pcc", pretrained=True)
    with pytest.raises(LTPAError, match="no checkpoint at"):
        ltpa.create_model("vgg", checkpoint_path=tmp_path)
    with pytest.raises(LTPAError, match="is not a pretrained folder"):
        ltpa.create_model("vgg", pretrained=tmp_path)  # an empty folder


def test_create_model_checkpoint_path_loads_an_ltpa_checkpoint(tmp_path):
    from ltpa.checkpoint import save_checkpoint

    torch.manual_seed(0)
    source = _small("vgg_gap", num_classes=3, img_size=16).eval()
    save_checkpoint(tmp_path / "run" / "last", source, epoch=1, extra={"classes": ["a", "b", "c"]})
    model = ltpa.create_model(
        "vgg_gap", checkpoint_path=tmp_path / "run", num_classes=3, img_size=16, width=0.125
    )
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(model.eval()(x), source(x))
    assert model.pretrained_cfg["classes"] == ["a", "b", "c"]
    with pytest.raises(LTPAError, match="holds vgg_gap, not vgg"):
        ltpa.create_model("vgg", checkpoint_path=tmp_path / "run")
    # the checkpoint's own arguments are the defaults: the name and the run folder are enough (README)
    again = ltpa.create_model("vgg_gap", checkpoint_path=tmp_path / "run")
    assert again.model_kwargs == source.model_kwargs
    torch.testing.assert_close(again.eval()(x), source(x))
    with pytest.raises(LTPAError, match="does not fit vgg_gap"):
        ltpa.create_model("vgg_gap", checkpoint_path=tmp_path / "run", num_classes=5)
