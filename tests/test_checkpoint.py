"""Reading weights (ltpa.checkpoint.read_weights): every path that loads weights refuses a file holding an inf
or NaN, naming the file and the tensor in one line, before anything is evaluated, trained or exported.

Each test saves real weights with ltpa, then edits one tensor of the saved safetensors file to NaN (as a
damaged or tampered file would hold), keeping the file's metadata."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_train_config
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import ltpa
from ltpa.checkpoint import check_finite, load_model, read_weights, save_checkpoint
from ltpa.cli import main
from ltpa.errors import LTPAError

pytestmark = pytest.mark.usefixtures("single_thread")

NAN_MESSAGE = r"hold inf or NaN values in {key}; the file is damaged or was edited"


def poison(path: Path, key: str | None = None, value: float = float("nan")) -> str:
    """Sets one element of tensor ``key`` (default: the first floating-point weight) of the safetensors file
    ``path`` to ``value``, keeping its metadata; returns the tensor's name."""
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
    tensors = load_file(str(path))
    key = key or next(k for k, v in tensors.items() if v.is_floating_point() and k.endswith("weight"))
    tensors[key].view(-1)[0] = value
    save_file(tensors, str(path), metadata=metadata)
    return key


def tiny_model(name: str = "vgg_att2_concat_pc", **kwargs: object) -> ltpa.LTPAModel:
    torch.manual_seed(0)
    return ltpa.create_model(name, **{"num_classes": 4, "width": 0.0625, "img_size": 16, **kwargs})


@pytest.fixture
def run(tmp_path: Path) -> Path:
    save_checkpoint(tmp_path / "run" / "last", tiny_model(), epoch=1)
    return tmp_path / "run"


def test_check_finite_names_the_first_bad_tensor_and_ignores_integers() -> None:
    check_finite({"a": torch.ones(2), "steps": torch.tensor([3])}, "f.safetensors")
    for bad in (float("nan"), float("inf"), float("-inf")):
        state = {"a": torch.ones(2), "b.weight": torch.tensor([1.0, bad]), "c": torch.tensor([bad])}
        with pytest.raises(LTPAError, match=r"weights f\.safetensors hold inf or NaN values in b\.weight;"):
            check_finite(state, "f.safetensors")
    check_finite({"half": torch.ones(2, dtype=torch.float16)}, "f")
    with pytest.raises(LTPAError, match="in half"):
        check_finite({"half": torch.tensor([float("inf")], dtype=torch.bfloat16)}, "f")


def test_read_weights_refuses_truncated_and_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(100)}, str(path))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(
        LTPAError, match=r"cannot read weights .*w\.safetensors: .*truncated or not safetensors"
    ):
        read_weights(path)
    path.write_text("not weights")
    with pytest.raises(LTPAError, match="truncated or not safetensors"):
        read_weights(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_load_model_refuses_non_finite_weights_by_name(run: Path, value: float) -> None:
    key = poison(run / "last.safetensors", value=value)
    for path in (run, run / "last.safetensors", run / "last.json", run / "last"):
        with pytest.raises(LTPAError, match=NAN_MESSAGE.format(key=key.replace(".", r"\."))) as info:
            load_model(path)
        assert "\n" not in str(info.value) and "last.safetensors" in str(info.value)


def test_non_finite_buffers_are_refused_too(run: Path) -> None:
    """BatchNorm statistics are weights for evaluation: a NaN running variance is as bad as a NaN kernel."""
    key = next(k for k in load_file(str(run / "last.safetensors")) if k.endswith("running_var"))
    poison(run / "last.safetensors", key)
    with pytest.raises(LTPAError, match=f"in {key}"):
        load_model(run)


@pytest.mark.parametrize("command", ["eval", "export"])
def test_cli_commands_on_a_nan_checkpoint_exit_non_zero_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """Before the fix ``ltpa eval`` reported chance accuracy and exited 0, and export wrote a NaN model."""
    run = tmp_path / "ten"  # a model of the data's 10 classes, which evaluated "fine" before
    save_checkpoint(run / "last", tiny_model(num_classes=10), epoch=1)
    key = poison(run / "last.safetensors")
    args = {
        "eval": ["eval", str(run), "--data", "cluttered-digits", "--data-option", "num_test=16"],
        "export": ["export", str(run), "--format", "hf"],
    }[command]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"NaN values in {key}" in err
    assert (
        not (tmp_path / "out" / "eval.json").exists()
        and not (tmp_path / "out" / "model.safetensors").exists()
    )


def test_create_model_checkpoint_path_refuses_non_finite_weights(run: Path) -> None:
    key = poison(run / "last.safetensors")
    with pytest.raises(LTPAError, match=f"NaN values in {key}"):
        ltpa.create_model("vgg_att2_concat_pc", checkpoint_path=run, num_classes=4, width=0.0625, img_size=16)


@pytest.fixture
def pretrained_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A save_pretrained folder with a NaN tensor, also laid out in an offline Hugging Face cache."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    folder = tiny_model().save_pretrained(tmp_path / "w")
    key = poison(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())  # a config that names these weights
    config["weights_sha256"] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "config.json").write_text(json.dumps(config))
    snapshot = cache / "models--someone--nan" / "snapshots" / ("1" * 40)
    snapshot.mkdir(parents=True)
    (cache / "models--someone--nan" / "refs").mkdir()
    (cache / "models--someone--nan" / "refs" / "main").write_text("1" * 40)
    for file in folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    return folder, key


def test_every_pretrained_reader_refuses_non_finite_weights(pretrained_folder: tuple[Path, str]) -> None:
    folder, key = pretrained_folder
    readers = [
        lambda: ltpa.create_model("vgg_att2_concat_pc", pretrained=str(folder)),
        lambda: ltpa.create_model("vgg_att2_concat_pc", pretrained=str(folder), num_classes=7),
        lambda: ltpa.LTPAModel.from_pretrained(folder),
        lambda: ltpa.create_model("vgg_att2_concat_pc", pretrained="hf-hub:someone/nan"),
        lambda: ltpa.create_model("hf-hub:someone/nan"),
        lambda: torch.hub.load(
            str(Path(__file__).resolve().parents[1]),
            "vgg_att2_concat_pc",
            source="local",
            pretrained=str(folder),
        ),
    ]
    for read in readers:
        with pytest.raises(LTPAError, match=f"NaN values in {key.replace('.', '[.]')}"):
            read()


def test_backbone_weights_files_are_checked(tmp_path: Path) -> None:
    """``timm/`` and ``tv/`` models read a backbone's ImageNet weights from a file given as ``pretrained``."""
    import timm
    import torchvision

    file = tmp_path / "timm.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(file))
    key = poison(file)
    with pytest.raises(LTPAError, match=f"timm.safetensors hold inf or NaN values in {key}"):
        ltpa.create_model("timm/test_resnet_att2_pc", num_classes=3, pretrained=str(file))
    file = tmp_path / "tv.safetensors"
    save_file(torchvision.models.resnet18().state_dict(), str(file))
    key = poison(file, "layer4.1.conv2.weight")
    with pytest.raises(LTPAError, match=f"tv.safetensors hold inf or NaN values in {key}"):
        ltpa.create_model("tv/resnet18_att2_pc", num_classes=3, pretrained=str(file))
    pth = tmp_path / "tv.pth"
    state = torchvision.models.resnet18().state_dict()
    state["fc.bias"][0] = float("inf")
    torch.save(state, pth)
    with pytest.raises(LTPAError, match=r"tv\.pth hold inf or NaN values in fc\.bias"):
        ltpa.create_model("tv/resnet18_att2_pc", num_classes=3, pretrained=str(pth))


def test_init_from_refuses_non_finite_and_truncated_checkpoints(tmp_path: Path) -> None:
    from ltpa.train import fit

    source = tmp_path / "source"
    save_checkpoint(source / "last", ltpa.create_model("vgg", num_classes=10, width=0.125), epoch=1)
    key = poison(source / "last.safetensors")
    with pytest.raises(LTPAError, match=f"NaN values in {key}"):
        fit(tiny_train_config(tmp_path, init_from=str(source), epochs=1))
    assert not (tmp_path / "run" / "last.safetensors").exists()
    weights = source / "last.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(LTPAError, match="truncated or not safetensors"):
        fit(tiny_train_config(tmp_path, init_from=str(source), epochs=1))


@pytest.mark.parametrize("part", ["model", "optim"])
def test_resume_refuses_non_finite_state_and_keeps_the_run(tmp_path: Path, part: str) -> None:
    from ltpa.train import LOCK_FILE, RESUME_FILE, fit

    fit(tiny_train_config(tmp_path, epochs=1))
    run = tmp_path / "run"
    state = run / RESUME_FILE
    tensors = load_file(str(state))
    key = poison(
        state, next(k for k, v in tensors.items() if k.startswith(part + ".") and v.is_floating_point())
    )

    def files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != LOCK_FILE}

    before = files()
    with pytest.raises(LTPAError, match=f"NaN values in {key.replace('.', '[.]')}"):
        fit(tiny_train_config(tmp_path, epochs=2), resume=run)
    assert files() == before


@pytest.mark.parametrize("field", ["top", "model_kwargs"])
def test_pretrained_config_whose_num_classes_differs_from_its_weights_is_refused(
    tmp_path: Path, field: str
) -> None:
    """It loaded with a freshly initialised (random) classifier, without a word."""
    folder = tiny_model().save_pretrained(tmp_path / "w")
    config = json.loads((folder / "config.json").read_text())
    if field == "top":
        config["num_classes"] = 7
    else:
        config["model_kwargs"]["num_classes"] = 7
    (folder / "config.json").write_text(json.dumps(config))
    for read in (
        lambda: ltpa.create_model("vgg_att2_concat_pc", pretrained=str(folder)),
        lambda: ltpa.LTPAModel.from_pretrained(folder),
    ):
        with pytest.raises(
            LTPAError, match=r"num_classes 7 but its weights have 4 classes: the config was edited"
        ):
            read()


def test_asking_for_another_num_classes_still_gives_a_fresh_classifier(tmp_path: Path) -> None:
    model = tiny_model()
    folder = model.save_pretrained(tmp_path / "w")
    other = ltpa.create_model("vgg_att2_concat_pc", pretrained=str(folder), num_classes=7)
    assert other.num_classes == 7 and other.pretrained_cfg["classes"] is None
    same = {k: v for k, v in other.state_dict().items() if k in model.state_dict()}
    differ = [k for k, v in same.items() if v.shape != model.state_dict()[k].shape]
    assert differ and all(k.startswith(tuple(_head(other))) for k in differ)
    loaded = ltpa.LTPAModel.from_pretrained(folder)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)


def _head(model: ltpa.LTPAModel) -> list[str]:
    classifier = model.get_classifier()
    return [name for name, m in model.named_modules() if m is classifier]


def test_a_model_with_nan_weights_is_never_saved(tmp_path: Path) -> None:
    model = tiny_model()
    with torch.no_grad():
        model.get_classifier().weight[0, 0] = float("nan")
    with pytest.raises(LTPAError, match=r"holds inf or NaN values; no checkpoint was written"):
        save_checkpoint(tmp_path / "run" / "last", model)
    with pytest.raises(LTPAError, match=r"holds inf or NaN values; no pretrained folder was written"):
        model.save_pretrained(tmp_path / "w")
    assert not (tmp_path / "run").exists() and not (tmp_path / "w").exists()


# ------------------------------------------------------------------ untrusted sidecars and config.json files


def _edit_sidecar(run: Path, edit: object) -> None:
    meta = json.loads((run / "last.json").read_text())
    edit(meta)  # type: ignore[operator]
    (run / "last.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (
            lambda m: m["model_kwargs"].update(num_classes=10**9),
            r"num_classes in .*last\.json must be a number in 1\.\.100000",
        ),
        (
            lambda m: m["model_kwargs"].update(width=1e6),
            r"width in .*last\.json must be a number in 0\.001\.\.4",
        ),
        (lambda m: m["model_kwargs"].update(width=float("nan")), "width in .* must be a number"),
        (lambda m: m["model_kwargs"].update(img_size=-5), "img_size in .* must be a number in 1..4096"),
        (lambda m: m["model_kwargs"].update(num_classes="10"), "num_classes in .* must be a whole number"),
        (lambda m: m["model_kwargs"].update(compatibility=["pc"]), "compatibility in .* must be a str"),
        (lambda m: m["model_kwargs"].update(unknown_arg=1), "does not take these arguments: .*unknown_arg"),
        (lambda m: m.update(model_kwargs=[1, 2]), "model_kwargs in .* must be a mapping"),
        (lambda m: m.update(model_name=7), "model_name in .* must be a str"),
        (lambda m: m.update(config=["not", "a", "mapping"]), "config in .* must be a mapping"),
        (lambda m: m.update(classes={"a": 1}), "classes in .* must be a list"),
        (lambda m: m.update(num_classes=10**12), "num_classes in .* must be a number in 1..100000"),
    ],
)
def test_tampered_sidecar_fields_are_refused_before_building(
    run: Path, edit: object, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ltpa.models._registry as registry

    built: list[str] = []
    real = registry._MODELS["vgg_att2_concat_pc"]

    @functools.wraps(real)
    def counting(**kwargs: object) -> ltpa.LTPAModel:
        built.append("x")
        return real(**kwargs)

    monkeypatch.setitem(registry._MODELS, "vgg_att2_concat_pc", counting)
    _edit_sidecar(run, edit)
    with pytest.raises(LTPAError, match=words) as info:
        load_model(run)
    assert "\n" not in str(info.value) and not built  # nothing was allocated


def test_deeply_nested_or_huge_sidecars_are_one_line_errors(run: Path) -> None:
    (run / "last.json").write_text('{"model_name": "vgg", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(LTPAError, match=r"corrupt checkpoint sidecar .* nested too deeply"):
        load_model(run)
    with open(run / "last.json", "w") as fh:
        fh.write('{"model_name": "vgg", "pad": "')
        fh.write("x" * (17 * 2**20))
        fh.write('"}')
    with pytest.raises(LTPAError, match="not an ltpa checkpoint sidecar"):
        load_model(run)


def test_tampered_pretrained_config_is_refused_before_building(tmp_path: Path) -> None:
    folder = tiny_model().save_pretrained(tmp_path / "w")
    config = json.loads((folder / "config.json").read_text())
    config["model_kwargs"]["width"] = 1e6
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LTPAError, match=r"width in config\.json of .* must be a number in 0\.001\.\.4"):
        ltpa.LTPAModel.from_pretrained(folder)
    config["model_kwargs"]["width"] = 0.0625
    config["pretrained_cfg"] = "x"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LTPAError, match=r"pretrained_cfg in config\.json of .* must be a mapping"):
        ltpa.create_model("vgg_att2_concat_pc", pretrained=str(folder))


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (
            {"data": "cluttered-digits", "data_options": {"num_test": 10**9}},
            "num_test=1000000000 is out of range",
        ),
        ({"data": "image-folder", "root": "/"}, "root '/' is not a dataset folder"),
        ({"data": "cluttered-digits", "data_options": ["num_test"]}, "is malformed"),
        ({"data": ["cluttered-digits"]}, "is malformed"),
        ({"data": "cluttered-digits", "data_options": {"seed": {"a": 1}}}, "seed=.* is not a plain value"),
    ],
)
def test_eval_with_the_recorded_data_checks_it_first(
    run: Path, config: dict, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --data, evaluation reads the data the sidecar records: 1e9 test images ran for minutes at
    4 GB, and root "/" walked the whole file system."""
    _edit_sidecar(run, lambda m: m.update(config=config))
    assert main(["eval", str(run), "--out", str(run.parent / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(words, err) and "give --data NAME" in err


def test_create_model_refuses_absurd_sizes_from_code_too() -> None:
    with pytest.raises(LTPAError, match=r"num_classes must be a number in 1\.\.100000"):
        ltpa.create_model("vgg", num_classes=10**9)
    with pytest.raises(LTPAError, match="width must be a number"):
        ltpa.create_model("vgg", width=float("inf"))
    with pytest.raises(LTPAError, match="does not take these arguments"):
        ltpa.create_model("vgg", colour="blue")


# ------------------------------------------------------------------------------- one line, not a traceback


def test_export_with_an_impossible_image_size_is_one_line(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for size in ("-5", "0", "100000"):
        assert main(["export", str(run), "--img-size", size, "--out", str(run.parent / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--img-size must be a whole number of pixels in 1..4096" in err


def test_resume_with_another_runs_or_an_edited_resume_state_is_one_line(tmp_path: Path) -> None:
    from ltpa.train import RESUME_FILE, fit

    fit(tiny_train_config(tmp_path, epochs=1))
    fit(tiny_train_config(tmp_path, "wide", epochs=1, width=0.25))
    run, state = tmp_path / "run", tmp_path / "run" / RESUME_FILE
    own = state.read_bytes()
    state.write_bytes((tmp_path / "wide" / RESUME_FILE).read_bytes())  # another run's, of a wider model
    with pytest.raises(LTPAError, match=r"resume state .* does not fit the model and optimiser") as info:
        fit(tiny_train_config(tmp_path, epochs=2), resume=run)
    assert "\n" not in str(info.value)
    state.write_bytes(own)
    with safe_open(str(state), framework="pt") as fh:
        meta = json.loads(fh.metadata()["ltpa_state"])
    del meta["epoch"]
    tensors = load_file(str(state))
    save_file(tensors, str(state), metadata={"ltpa_state": json.dumps(meta)})
    with pytest.raises(LTPAError, match="is not one ltpa wrote"):
        fit(tiny_train_config(tmp_path, epochs=2), resume=run)


def test_a_truncated_transfer_feature_cache_is_one_line(run: Path, tmp_path: Path) -> None:
    from ltpa.evaluate.transfer import cached_features

    model = load_model(run)
    options = {"num_test": 8, "img_size": 16}
    args = {"cache_dir": tmp_path / "cache", "options": options, "progress": False}
    first = cached_features(model, "cluttered-digits", None, "test", **args)
    (cache,) = (tmp_path / "cache").glob("*.safetensors")
    cache.write_bytes(cache.read_bytes()[:50])
    with pytest.raises(LTPAError, match=r"feature cache .* is unreadable .*; delete it to extract again"):
        cached_features(model, "cluttered-digits", None, "test", **args)
    cache.unlink()
    again = cached_features(model, "cluttered-digits", None, "test", **args)
    torch.testing.assert_close(again[0], first[0])
