"""``ltpa predict``: top-k classes of image files and a map figure per attended level (Grad-CAM otherwise)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLUTTERED_OPTIONS
from PIL import Image

import ltpa
from ltpa.checkpoint import load_model, save_checkpoint
from ltpa.cli import main
from ltpa.errors import LTPAError
from ltpa.evaluate import to_model_input
from ltpa.predict import PredictConfig, run_predict, top_classes
from ltpa.visualize import load_image

pytestmark = pytest.mark.usefixtures("single_thread")


def _digit_pngs(folder: Path, count: int) -> list[Path]:
    """The first ``count`` cluttered test digits as PNG files (uint8 RGB)."""
    from ltpa.data import build_dataset

    dataset = build_dataset("cluttered-digits", split="test", **CLUTTERED_OPTIONS)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"digit{i}.png"
        Image.fromarray(dataset[i][0].permute(1, 2, 0).numpy()).save(path)
        paths.append(path)
    return paths


def _printed(stdout: str) -> dict[str, list[tuple[str, float]]]:
    """``{image: [(name, percent), ...]}`` from the command's output."""
    table: dict[str, list[tuple[str, float]]] = {}
    current = ""
    for line in stdout.splitlines():
        ranked = re.fullmatch(r"\s+\d+\. (\S+)\s+([\d.]+)%", line)
        if ranked:
            table[current].append((ranked[1], float(ranked[2])))
        elif not line.startswith(" "):
            current = line
            table[current] = []
    return table


def test_predict_prints_the_models_top_k_and_draws_each_level(
    trained_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pictures = _digit_pngs(tmp_path / "pictures", 2)
    out = tmp_path / "out"
    args = ["predict", str(trained_runs["att2"]), *map(str, pictures), "--top-k", "3"]
    assert main([*args, "--out", str(out), "--device", "cpu"]) == 0
    printed = _printed(capsys.readouterr().out)
    model = load_model(trained_runs["att2"])
    for path in pictures:
        x = to_model_input(load_image(path)[None], 16)
        with torch.no_grad():
            probs = model(x).softmax(dim=1)[0]
        values, indices = probs.topk(3)
        assert [name for name, _ in printed[str(path)]] == [str(int(i)) for i in indices]
        assert [p for _, p in printed[str(path)]] == pytest.approx((100 * values).tolist(), abs=0.006)
        for level in ("conv10", "conv13"):  # vgg_att2's attended levels, one figure each
            figure = Image.open(out / f"{path.stem}_{level}.png")
            assert figure.format == "PNG" and figure.size[0] > 300
        assert not (out / f"{path.stem}_Grad-CAM.png").exists()  # the model has maps of its own
    saved = json.loads((out / "predictions.json").read_text())
    assert [r["image"] for r in saved["images"]] == [str(p) for p in pictures]
    assert [e["name"] for e in saved["images"][0]["top"]] == [n for n, _ in printed[str(pictures[0])]]
    assert set(saved["images"][1]["maps"]) == {"conv10", "conv13"}


def test_predict_uses_saved_class_names_and_gradcam_without_maps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    model = ltpa.create_model("vgg", num_classes=4, width=0.0625, img_size=16)
    names = ["cat", "dog", "plane", "ship"]
    save_checkpoint(tmp_path / "run" / "last", model, epoch=1, extra={"classes": names})
    picture = tmp_path / "wide.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8)).save(picture)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "run"), str(picture), "--top-k", "9", "--out", str(out)]) == 0
    printed = _printed(capsys.readouterr().out)[str(picture)]
    assert sorted(name for name, _ in printed) == sorted(names)  # capped at the model's 4 classes
    assert sum(p for _, p in printed) == pytest.approx(100.0, abs=0.03)
    assert [p for _, p in printed] == sorted((p for _, p in printed), reverse=True)
    assert Image.open(out / "wide_Grad-CAM.png").format == "PNG"


def test_top_classes_ranks_and_caps() -> None:
    probs = torch.tensor([0.1, 0.6, 0.3])
    assert [e["class"] for e in top_classes(probs, 2)] == [1, 2]
    assert [e["name"] for e in top_classes(probs, 5, ["a", "b", "c"])] == ["b", "c", "a"]


def test_same_file_names_in_two_folders_get_two_figures(
    trained_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _digit_pngs(tmp_path / "a", 1)[0]
    second = _digit_pngs(tmp_path / "b", 1)[0]
    records = run_predict(trained_runs["att2"], [first, second], PredictConfig(out=str(tmp_path / "out")))
    assert [Path(r["maps"]["conv10"]).name for r in records] == ["digit0_conv10.png", "digit0-2_conv10.png"]


@pytest.mark.parametrize("problem", ["not an image", "missing file", "folder", "top-k", "no run"])
def test_bad_input_is_one_line_and_writes_nothing(
    problem: str, trained_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _digit_pngs(tmp_path / "pictures", 1)[0]
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    run, extra, pictures = str(trained_runs["att2"]), [], [str(good)]
    expected = {
        "not an image": "notes.png",
        "missing file": "not found",
        "folder": "is a folder",
        "top-k": "--top-k",
        "no run": "no checkpoint at",
    }[problem]
    if problem == "not an image":
        pictures.append(str(bad))
    elif problem == "missing file":
        pictures.append(str(tmp_path / "gone.jpg"))
    elif problem == "folder":
        pictures.append(str(tmp_path / "pictures"))
    elif problem == "top-k":
        extra = ["--top-k", "0"]
    else:
        run = str(tmp_path / "nowhere")
    out = tmp_path / "out"
    assert main(["predict", run, *pictures, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1 and err.startswith("ltpa predict: error:")
    assert not out.exists()
    with pytest.raises(LTPAError):
        run_predict(run, pictures, PredictConfig(out=str(out), top_k=0 if problem == "top-k" else 5))
