"""ONNX and TorchScript export (ltpa.export, ``ltpa export``): exported models agree with PyTorch to 1e-4."""

import json

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import ltpa
import ltpa.cli
from ltpa.checkpoint import save_checkpoint
from ltpa.errors import LTPAError
from ltpa.export import export_model, output_names
from ltpa.models._base import AttentionOutput, LTPAModel

# torch.jit.load (used to check TorchScript files) is deprecated in favour of torch.export.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


def _run(path, fmt, x):
    if fmt == "onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [torch.from_numpy(o) for o in session.run(None, {"images": x.numpy()})]
    out = torch.jit.load(str(path))(x)
    return list(out) if isinstance(out, tuple) else [out]


def _assert_agrees(model, path, fmt, with_maps, img_size, batch=5):
    # Independent of export_model's own check: another batch size and seed.
    x = torch.rand(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = model.forward_attention(x)
    expected = [out.logits, *out.maps] if with_maps else [out.logits]
    got = _run(path, fmt, x)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        assert (g - e).abs().max() <= 1e-4


MODELS = {
    "vgg": lambda: ltpa.create_model("vgg_att2_concat_pc", num_classes=4, width=0.125),
    "timm": lambda: ltpa.create_model("timm/test_efficientnet_att2_indep_dp", num_classes=4, img_size=64),
    "torchvision": lambda: ltpa.create_model("tv/resnet18_att2_pc", num_classes=4, img_size=64),
}
CASES = [
    ("vgg", "onnx", True),
    ("vgg", "torchscript", False),
    ("timm", "onnx", False),
    ("timm", "torchscript", True),
    ("torchvision", "onnx", True),
]


@pytest.mark.parametrize("name,fmt,with_maps", CASES)
def test_export_agrees_with_pytorch(tmp_path, name, fmt, with_maps):
    torch.manual_seed(0)
    model = MODELS[name]()
    with torch.no_grad():  # non-uniform maps, so that the map outputs are a real test
        for attn in model.attention:
            if attn.score is not None:
                attn.score.weight.normal_(0.0, 0.1)
    model.train()
    path = export_model(model, tmp_path / f"model.{fmt}", fmt, with_maps=with_maps)
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left
    assert model.training, "the train/eval mode is restored"
    _assert_agrees(model.eval(), path, fmt, with_maps, model.img_size)


def test_onnx_names_and_metadata(tmp_path):
    model = ltpa.create_model("vgg_att3_concat_dp", num_classes=3, width=0.125)
    path = export_model(model, tmp_path / "m.onnx", with_maps=True)
    proto = onnx.load(str(path))
    names = [o.name for o in proto.graph.output]
    assert names == output_names(model, True) == ["logits", "attn0_conv7", "attn1_conv10", "attn2_conv13"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["ltpa"])
    assert (
        meta["model_name"] == "vgg_att3_concat_dp" and meta["num_classes"] == 3 and meta["outputs"] == names
    )


def test_plain_backbone_with_hooks_exports(tmp_path):
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
    )
    model = ltpa.attach(net, levels=(0, 1), compatibility="dp", num_classes=3, img_size=32).eval()
    for fmt in ("onnx", "torchscript"):
        path = export_model(model, tmp_path / f"plain.{fmt}", fmt, with_maps=True)
        _assert_agrees(model, path, fmt, True, 32)
    extra = {"ltpa.json": ""}
    torch.jit.load(str(tmp_path / "plain.torchscript"), _extra_files=extra)
    assert json.loads(extra["ltpa.json"])["outputs"] == ["logits", "attn0_1", "attn1_4"]


class _PythonScalar(LTPAModel):
    """Turns a tensor into a Python float: tracing bakes it in, so the export is wrong for other inputs."""

    def __init__(self) -> None:
        super().__init__(num_classes=2, img_size=16)
        self.fc = nn.Linear(3, 2)

    def _forward(self, x):
        feats = x.mean(dim=(2, 3)) * float(x.mean())
        return AttentionOutput(self.fc(feats), [], []), feats


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_wrong_export_raises_and_leaves_no_file(tmp_path, fmt):
    with pytest.raises(LTPAError, match="differs from PyTorch"):
        export_model(_PythonScalar(), tmp_path / "bad", fmt)
    assert list(tmp_path.iterdir()) == []


def test_export_errors(tmp_path):
    with pytest.raises(LTPAError, match="unknown export format"):
        export_model(_PythonScalar(), tmp_path / "m", "tflite")  # type: ignore[arg-type]
    with pytest.raises(LTPAError, match="no attention maps"):
        export_model(_PythonScalar(), tmp_path / "m.onnx", with_maps=True)


def test_cli_export(tmp_path, capsys):
    torch.manual_seed(0)
    model = ltpa.create_model("timm/test_convnext_att2_pc", num_classes=3, img_size=64)
    save_checkpoint(tmp_path / "run" / "last", model, epoch=1)
    assert ltpa.cli.main(["export", str(tmp_path / "run"), "--format", "onnx", "--with-maps"]) == 0
    assert "matches PyTorch within 0.0001" in capsys.readouterr().out
    _assert_agrees(model.eval(), tmp_path / "run" / "last.onnx", "onnx", True, 64)

    vgg = ltpa.create_model("vgg_att2_concat_pc", num_classes=3, width=0.125)
    save_checkpoint(tmp_path / "vgg", vgg, epoch=1)
    out = tmp_path / "vgg_ts.pt"
    args = ["export", str(tmp_path / "vgg.safetensors"), "--format", "torchscript"]
    assert ltpa.cli.main([*args, "--file", str(out)]) == 0
    _assert_agrees(vgg.eval(), out, "torchscript", False, 32)
    # --out is always a folder: the file is named after the checkpoint; a file name there is refused
    assert ltpa.cli.main([*args, "--out", str(tmp_path / "exports"), "--no-check"]) == 0
    assert (tmp_path / "exports" / "vgg.pt").is_file()
    assert ltpa.cli.main([*args, "--out", str(tmp_path / "x.pt")]) == 2
    assert "--out is a folder" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()

    assert ltpa.cli.main(["export", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_cli_export_hf_folder(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    torch.manual_seed(0)
    model = ltpa.create_model("vgg_att2_concat_pc", num_classes=3, width=0.125, img_size=16)
    config = {"model": "vgg_att2_concat_pc", "data": "cluttered-digits", "preset": None, "epochs": 2}
    metrics = {"test_accuracy": 0.75}
    classes = ["zero", "one", "two"]
    save_checkpoint(
        tmp_path / "run" / "last", model, epoch=2, metrics=metrics, config=config, extra={"classes": classes}
    )
    out = tmp_path / "shared"
    assert ltpa.cli.main(["export", str(tmp_path / "run"), "--format", "hf", "--out", str(out)]) == 0
    assert "matches PyTorch" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    card = (out / "README.md").read_text()
    assert "ltpa train --model vgg_att2_concat_pc --data cluttered-digits" in card
    assert "test_accuracy: 0.75" in card and "Data: cluttered-digits" in card and "zero, one, two" in card
    meta = json.loads((out / "config.json").read_text())
    assert meta["training"]["metrics"] == metrics and meta["pretrained_cfg"]["classes"] == classes
    loaded = ltpa.create_model("vgg_att2_concat_pc", pretrained=out).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
    assert loaded.pretrained_cfg["classes"] == classes

    assert ltpa.cli.main(["export", str(tmp_path / "run"), "--format", "hf"]) == 0  # default: beside it
    assert (tmp_path / "run" / "last-hf" / "model.safetensors").is_file()
    assert ltpa.cli.main(["export", str(tmp_path / "run"), "--format", "hf", "--with-maps"]) == 2
    assert "--with-maps is for onnx and torchscript" in capsys.readouterr().err


def test_hf_export_card_reproduces_the_run_and_holds_no_local_path(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from ltpa.config import TrainConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    model = ltpa.create_model("vgg", num_classes=3, width=0.125, img_size=16)
    cfg = TrainConfig(
        model="vgg", data="image-folder", root=str(tmp_path / "data" / "pets"), width=0.125, img_size=16,
        epochs=4, data_options={"train_fraction": 0.5}, out=str(tmp_path / "runs" / "pets"), threads=2,
    )  # fmt: skip
    save_checkpoint(tmp_path / "runs" / "pets" / "last", model, epoch=4, config=cfg.to_dict())
    assert ltpa.cli.main(["export", "runs/pets", "--format", "hf", "--out", "shared"]) == 0
    text = (tmp_path / "shared" / "config.json").read_text()
    assert str(tmp_path) not in text  # neither the data folder nor the run folder of this machine
    meta = json.loads(text)
    assert meta["training"]["config"]["root"] == "data/pets"
    command = meta["training"]["command"]
    assert command == (
        "ltpa train --model vgg --data image-folder --root data/pets --data-option train_fraction=0.5 "
        "--width 0.125 --img-size 16 --epochs 4"
    )
    assert f"`{command}`" in (tmp_path / "shared" / "README.md").read_text()
