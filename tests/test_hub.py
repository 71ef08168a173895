"""Shareable weights (ltpa.hub): save_pretrained / from_pretrained folders, hf-hub ids read from a local cache,
``create_model(pretrained=...)`` and torch.hub entry points. Nothing is downloaded: the Hub is offline."""

import json
from pathlib import Path

import pytest
import torch
from conftest import cache_hub_repo

import ltpa
from ltpa.errors import LTPAError
from ltpa.hub import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, from_pretrained
from ltpa.models import VGG

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def _model(name="vgg_att2_concat_pc", **kwargs):
    torch.manual_seed(0)
    kwargs = {"num_classes": 4, "width": 0.125, "img_size": 16, **kwargs}
    model = ltpa.create_model(name, **{k: v for k, v in kwargs.items() if v is not None})
    with torch.no_grad():  # state beyond the initialisation, in the normalisation buffers too
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def _same(a, b, side=16):
    x = torch.rand(3, 3, side, side, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = _model(preprocess="meanstd")
    model.preprocess.fit(torch.rand(8, 3, 16, 16))
    folder = model.save_pretrained(tmp_path / "out", classes=list("abcd"))
    assert sorted(p.name for p in folder.iterdir()) == sorted([WEIGHTS_NAME, CONFIG_NAME, CARD_NAME])
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["model_name"] == "vgg_att2_concat_pc"
    assert config["model_kwargs"] == {
        "num_classes": 4,
        "width": 0.125,
        "img_size": 16,
        "preprocess": "meanstd",
    }
    assert config["pretrained_cfg"]["classes"] == list("abcd")
    card = (folder / CARD_NAME).read_text()
    params = sum(p.numel() for p in model.parameters())
    assert f"Parameters: {params:,}" in card and "code licence: MIT" in card and "create_model" in card

    loaded = ltpa.LTPAModel.from_pretrained(folder)
    assert not loaded.training  # eval mode, as Hugging Face loaders return
    _same(loaded, model)
    assert loaded.pretrained_cfg["classes"] == list("abcd")
    with pytest.raises(LTPAError, match="not a VGG"):
        VGG.from_pretrained(folder)


@pytest.mark.parametrize(
    "name",
    ["vgg_att2_concat_pc", "vgg", "vgg_gap", "vgg_pan", "resnet164_att2_concat_pc", "tv/resnet18_att2_pc"],
)
def test_a_reset_classifier_is_saved_and_loaded_back(tmp_path, name):
    from ltpa.checkpoint import load_model, save_checkpoint

    model = _model(name, img_size=32, **({"width": None} if "/" in name else {}))
    model.reset_classifier(7)
    with torch.no_grad():
        for p in model.get_classifier().parameters():
            p.add_(0.5)  # trained, unlike a fresh head
    assert model.model_kwargs["num_classes"] == 7
    loaded = ltpa.LTPAModel.from_pretrained(model.save_pretrained(tmp_path / "w"))
    assert loaded.num_classes == 7
    _same(loaded, model, side=32)
    save_checkpoint(tmp_path / "run" / "last", model, epoch=1)
    _same(load_model(tmp_path / "run"), model, side=32)


def test_create_model_pretrained_folder(tmp_path):
    model = _model("vgg_att3_indep_dp")
    model.save_pretrained(tmp_path / "w")
    loaded = ltpa.create_model("vgg_att3_indep_dp", pretrained=tmp_path / "w")
    assert loaded.training  # as timm's create_model
    assert loaded.model_kwargs["width"] == 0.125  # the saved arguments are the defaults
    _same(loaded, model)
    # another number of classes: everything but the classifier is loaded (timm's behaviour)
    fresh = ltpa.create_model("vgg_att3_indep_dp", pretrained=str(tmp_path / "w"), num_classes=6)
    state, saved = fresh.state_dict(), model.state_dict()
    assert fresh.num_classes == 6 and state["head.fc.0.weight"].shape == (6, fresh.head.channels[0])
    assert all(torch.equal(v, saved[k]) for k, v in state.items() if not k.startswith("head.fc."))
    with pytest.raises(LTPAError, match="do not fit"):
        ltpa.create_model("vgg_att3_indep_dp", pretrained=tmp_path / "w", width=0.25)
    with pytest.raises(LTPAError, match="holds vgg_att3_indep_dp, not vgg"):
        ltpa.create_model("vgg", pretrained=tmp_path / "w")


def test_family_model_round_trip_keeps_backbone_pretrained_meaning(tmp_path):
    torch.manual_seed(0)
    model = ltpa.create_model("timm/test_resnet_att2_pc", num_classes=3, img_size=64).eval()
    model.save_pretrained(tmp_path / "w")
    loaded = ltpa.create_model("timm/test_resnet_att2_pc", pretrained=tmp_path / "w")
    _same(loaded, model, side=64)
    # a weights file still means the backbone's weights for timm/ and tv/ names (models/attach.py)
    with pytest.raises(LTPAError, match="does not exist"):
        ltpa.create_model("timm/test_resnet_att2_pc", pretrained=str(tmp_path / "missing.pth"))


def test_hf_hub_ids_load_from_the_cache_offline(tmp_path):
    import huggingface_hub.constants

    model = _model("vgg_att1_concat_dp")
    model.save_pretrained(tmp_path / "w", license="cc-by-4.0")
    cache_hub_repo(tmp_path / "w", Path(huggingface_hub.constants.HF_HUB_CACHE), "someone/ltpa-att1")
    loaded = ltpa.create_model("vgg_att1_concat_dp", pretrained="hf-hub:someone/ltpa-att1")
    _same(loaded, model)
    assert loaded.pretrained_cfg["hf_hub_id"] == "someone/ltpa-att1"
    assert loaded.pretrained_cfg["license"] == "cc-by-4.0"
    _same(ltpa.create_model("hf-hub:someone/ltpa-att1"), model)  # timm's create_model("hf-hub:...")
    _same(from_pretrained("someone/ltpa-att1"), model)  # from_pretrained also takes a bare id
    with pytest.raises(LTPAError, match=r"cannot get config\.json of Hub repository someone/missing"):
        ltpa.create_model("vgg", pretrained="hf-hub:someone/missing")
    with pytest.raises(LTPAError, match="is not a Hub id"):
        ltpa.create_model("vgg", pretrained="hf-hub:no-slash")


def test_torch_hub_load_local(tmp_path):
    model = torch.hub.load(
        str(REPO_ROOT), "vgg_att2_concat_pc", source="local", num_classes=3, width=0.125, img_size=16
    )
    assert isinstance(model, ltpa.LTPAModel) and model.model_name == "vgg_att2_concat_pc"
    assert model.eval()(torch.rand(1, 3, 16, 16)).shape == (1, 3)
    saved = _model()
    saved.save_pretrained(tmp_path / "w")
    loaded = torch.hub.load(
        str(REPO_ROOT), "vgg_att2_concat_pc", source="local", pretrained=str(tmp_path / "w")
    )
    _same(loaded, saved)
    family = torch.hub.load(
        str(REPO_ROOT), "create_model", "timm/test_resnet_att2_pc", source="local", num_classes=2, img_size=64
    )
    assert family.model_name == "timm/test_resnet_att2_pc"


def _copy_of_the_repository(tmp_path):
    import shutil

    copy = tmp_path / "checkout"
    shutil.copytree(
        REPO_ROOT / "src" / "ltpa", copy / "src" / "ltpa", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO_ROOT / "hubconf.py", copy / "hubconf.py")
    return copy


@pytest.mark.slow  # two fresh interpreters
def test_torch_hub_load_local_runs_that_checkouts_code(tmp_path):
    """It ran whatever ltpa was installed (or imported) instead of the checkout's code."""
    import os
    import subprocess
    import sys

    copy = _copy_of_the_repository(tmp_path)
    code = (
        "import sys, torch\n"
        "m = torch.hub.load(sys.argv[1], 'vgg', source='local', num_classes=3, width=0.0625, img_size=16)\n"
        "import ltpa; print(ltpa.__file__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as a user: ltpa installed elsewhere
    done = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(copy / "src" / "ltpa" / "__init__.py")
    # with another ltpa already imported, it says so rather than running the wrong code
    code = "import sys, torch, ltpa\ntorch.hub.load(sys.argv[1], 'vgg', source='local')\n"
    env["PYTHONPATH"] = str(REPO_ROOT / "src")
    done = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True, text=True, env=env)
    assert done.returncode != 0 and "rather than the code in" in done.stderr
