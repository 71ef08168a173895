"""End to end: every evaluation command on small trained checkpoints, cluttered digits and fake datasets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import CLUTTERED_OPTIONS, data_option_flags

from ltpa.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def header(path: Path) -> list[str]:
    return path.read_text().splitlines()[0].split(",")


def cluttered_test_set() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from ltpa.data import build_dataset, load_tensors

    images, labels, masks = load_tensors(build_dataset("cluttered-digits", split="test", **CLUTTERED_OPTIONS))
    assert masks is not None
    return images, labels, masks


@pytest.fixture(scope="module")
def eval_report(trained_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("eval")
    runs = [str(trained_runs[k]) for k in ("att2", "vgg", "gap")]
    assert main(["eval", *runs, "--data", "cluttered-digits", *data_option_flags(), "--out", str(out)]) == 0
    for name in ("att2", "vgg", "gap"):
        assert (out / f"confusion_{name}.png").stat().st_size > 1000
    return json.loads((out / "eval.json").read_text())


def test_eval_reports_accuracy_per_class_and_confusion(eval_report: dict) -> None:
    _, labels, _ = cluttered_test_set()
    assert set(eval_report) == {"att2", "vgg", "gap"}
    for result in eval_report.values():
        confusion = torch.tensor(result["confusion"])
        assert confusion.sum() == result["n"] == len(labels)
        assert confusion.sum(dim=1).tolist() == torch.bincount(labels, minlength=10).tolist()
        assert result["accuracy"] == pytest.approx(confusion.diag().sum().item() / result["n"])
        assert result["error"] == pytest.approx(1 - result["accuracy"])
        assert set(result["per_class"]) == {str(d) for d in range(10)}
    # trained models are well above chance (10 classes)
    assert eval_report["att2"]["accuracy"] > 0.3
    assert eval_report["vgg"]["accuracy"] > 0.3


def test_eval_accuracy_matches_the_loaded_model(trained_runs: dict[str, Path], eval_report: dict) -> None:
    from ltpa.checkpoint import load_model

    images, labels, _ = cluttered_test_set()
    model = load_model(trained_runs["att2"])
    with torch.no_grad():
        accuracy = (model(images.float() / 255).argmax(1) == labels).float().mean().item()
    assert eval_report["att2"]["accuracy"] == pytest.approx(accuracy)


def test_eval_stl10_directly_through_a_cifar10_head(trained_runs: dict[str, Path], tmp_path: Path) -> None:
    """Fake STL-10 files scored by a 10-class model: the monkeys dropped, labels in CIFAR-10 order."""
    from ltpa.data import CIFAR10_CLASSES

    folder = tmp_path / "stl" / "stl10_binary"
    folder.mkdir(parents=True)
    labels = bytes([1 + i % 10 for i in range(20)])  # 1-based STL labels; 8 = monkey
    (folder / "test_X.bin").write_bytes(
        torch.randint(0, 256, (20 * 3 * 96 * 96,), dtype=torch.uint8).numpy().tobytes()
    )
    (folder / "test_y.bin").write_bytes(labels)
    args = ["eval", str(trained_runs["gap"]), "--data", "stl10", "--root", str(tmp_path / "stl")]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "eval.json").read_text())["gap"]
    assert result["n"] == 18 and result["classes"] == list(CIFAR10_CLASSES)
    assert result["per_class"]["frog"] is None and result["options"] == {"cifar10_labels": True}
    rows = torch.tensor(result["confusion"]).sum(dim=1)
    assert rows[CIFAR10_CLASSES.index("frog")] == 0 and rows[CIFAR10_CLASSES.index("automobile")] == 2


def test_attack_eps0_equals_eval_and_fgsm_lowers_accuracy(
    trained_runs: dict[str, Path], eval_report: dict, tmp_path: Path
) -> None:
    runs = [str(trained_runs[k]) for k in ("att2", "vgg")]
    args = ["attack", *runs, "--data", "cluttered-digits", *data_option_flags(), "--method", "fgsm"]
    assert main([*args, "--eps", "0,4,16", "--out", str(tmp_path)]) == 0
    path = tmp_path / "attack.csv"
    assert header(path) == ["model", "method", "eps", "accuracy", "fooling_rate"]
    rows = read_csv(path)
    assert (tmp_path / "attack.png").stat().st_size > 1000
    for name in ("att2", "vgg"):
        mine = {float(r["eps"]): r for r in rows if r["model"] == name}
        assert set(mine) == {0.0, 4.0, 16.0}
        assert float(mine[0.0]["accuracy"]) == eval_report[name]["accuracy"]  # exactly
        assert float(mine[0.0]["fooling_rate"]) == 0.0
        assert float(mine[16.0]["accuracy"]) < float(mine[0.0]["accuracy"]) - 0.1
        assert float(mine[16.0]["fooling_rate"]) > 0.1


def test_fgsm_on_trained_model_matches_per_sample_functional_gradient(trained_runs: dict[str, Path]) -> None:
    """Cross-check: the adversarial images equal x + eps * sign(grad) with the gradient of each image's own
    loss computed by torch.func (per-sample, mean reduction), independently of the batched autograd call."""
    from torch.func import functional_call, grad, vmap

    from ltpa.checkpoint import load_model
    from ltpa.evaluate import fgsm

    model = load_model(trained_runs["vgg"])
    images, labels, _ = cluttered_test_set()
    x, y = images[:16].float() / 255, labels[:16]
    eps = 8 / 255
    adv = fgsm(model, x, y, eps)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (params, buffers), (xi[None],))
        return torch.nn.functional.cross_entropy(logits, yi[None])

    g = vmap(grad(loss))(x, y)
    expected = (x + eps * g.sign()).clamp(0, 1)
    agree = (adv == expected).float().mean().item()
    assert agree > 0.999  # only gradient components within rounding of zero may differ
    assert (adv - x).abs().max() <= eps + 1e-7
    assert all(p.grad is None for p in model.parameters())


def test_segment_on_cluttered_digits(trained_runs: dict[str, Path], tmp_path: Path) -> None:
    runs = [str(trained_runs[k]) for k in ("att2", "gap")]
    args = ["segment", *runs, "--data", "cluttered-digits", *data_option_flags(), "--gradcam-backend", "own"]
    assert main([*args, "--out", str(tmp_path), "--examples", "3"]) == 0
    assert header(tmp_path / "segment.csv") == ["model", "map", "level", "threshold_rule", "class", "jaccard"]
    rows = read_csv(tmp_path / "segment.csv")
    kinds = {(r["model"], r["map"], r["level"]) for r in rows}
    assert {
        ("att2", "attention", "conv10"),
        ("att2", "attention", "conv13"),
        ("att2", "attention", "mean"),
    } <= kinds
    assert ("gap", "cam", "conv13") in kinds
    assert {("baseline", "gaussian", "-"), ("baseline", "uniform", "-")} <= kinds
    assert any(m == "att2" and kind == "gradcam" for m, kind, _ in kinds)
    for name in ("segment_att2.png", "segment_gap.png", "segment_baseline.png"):
        assert (tmp_path / name).stat().st_size > 1000

    table = {
        (r["model"], r["map"], r["level"], r["threshold_rule"], r["class"]): float(r["jaccard"]) for r in rows
    }
    for (model, kind, level, rule, cls), value in table.items():
        assert 0.0 <= value <= 1.0
        if rule == "oracle":
            assert value >= table[(model, kind, level, "fixed", cls)] - 1e-9
    # the uniform map binarises to the whole image: its Jaccard is the object's area fraction
    _, labels, masks = cluttered_test_set()
    area = masks.flatten(1).float().mean(dim=1)
    for digit in range(10):
        expected = area[labels == digit].mean().item()
        for rule in ("fixed", "otsu", "oracle"):
            assert table[("baseline", "uniform", "-", rule, str(digit))] == pytest.approx(expected, abs=1e-6)
    per_image = read_csv(tmp_path / "segment_images.csv")
    assert len([r for r in per_image if r["model"] == "baseline" and r["map"] == "uniform"]) == 3 * len(
        labels
    )


def test_segment_on_fake_object_discovery(
    trained_runs: dict[str, Path], fake_object_discovery: Path, tmp_path: Path
) -> None:
    args = [
        "segment",
        str(trained_runs["att2"]),
        "--data",
        "object-discovery",
        "--root",
        str(fake_object_discovery),
    ]
    assert main([*args, "--size", "24", "--no-gradcam", "--out", str(tmp_path)]) == 0
    rows = read_csv(tmp_path / "segment.csv")
    assert {r["class"] for r in rows} == {"airplane", "car", "horse", "mean"}
    # 4 usable images per class (the empty masks are skipped)
    per_image = read_csv(tmp_path / "segment_images.csv")
    uniform_fixed = [r for r in per_image if r["map"] == "uniform" and r["threshold_rule"] == "fixed"]
    assert len(uniform_fixed) == 12


def test_segment_rejects_data_without_masks(
    trained_runs: dict[str, Path], fake_image_folder: Path, tmp_path: Path, capsys
) -> None:
    args = ["segment", str(trained_runs["att2"]), "--data", "image-folder", "--root", str(fake_image_folder)]
    assert main([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no ground-truth masks" in err and "object-discovery" in err and len(err.strip().splitlines()) == 1


def test_localize_uniform_map_scores_box_area_fraction(trained_runs: dict[str, Path], tmp_path: Path) -> None:
    runs = [str(trained_runs[k]) for k in ("att2", "gap")]
    assert (
        main(
            [
                "localize",
                *runs,
                "--data",
                "cluttered-digits",
                *data_option_flags(),
                "--gradcam",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert header(tmp_path / "localize.csv") == [
        "model",
        "level",
        "mass_in_box",
        "mass_in_mask",
        "pointing_accuracy",
    ]
    rows = {(r["model"], r["level"]): r for r in read_csv(tmp_path / "localize.csv")}
    report = json.loads((tmp_path / "localize.json").read_text())
    _, _, masks = cluttered_test_set()
    # box area from the masks, computed here independently of ltpa.data.boxes
    ys, xs = masks.any(dim=2), masks.any(dim=1)
    heights = ys.shape[1] - ys.int().argmax(1) - ys.flip(1).int().argmax(1)
    widths = xs.shape[1] - xs.int().argmax(1) - xs.flip(1).int().argmax(1)
    box_fraction = (heights * widths).float().div(masks.shape[1] * masks.shape[2]).mean().item()
    assert report["box_area_fraction"] == pytest.approx(box_fraction, abs=1e-6)
    uniform = rows[("baseline", "uniform")]
    assert float(uniform["mass_in_box"]) == pytest.approx(report["box_area_fraction"], abs=1e-6)
    assert float(uniform["mass_in_mask"]) == pytest.approx(report["mask_area_fraction"], abs=1e-6)
    assert float(uniform["pointing_accuracy"]) == pytest.approx(report["mask_area_fraction"], abs=1e-6)
    assert {
        ("att2", "conv10"),
        ("att2", "conv13"),
        ("att2", "mean"),
        ("att2", "gradcam"),
        ("gap", "conv13"),
    } <= set(rows)
    for row in rows.values():
        for column in ("mass_in_box", "mass_in_mask", "pointing_accuracy"):
            assert 0.0 <= float(row[column]) <= 1.0
        assert float(row["mass_in_mask"]) <= float(row["mass_in_box"]) + 1e-6  # the mask lies inside its box
    assert (tmp_path / "localize.png").stat().st_size > 1000


def test_transfer_on_fake_image_folder_uses_the_cache(
    trained_runs: dict[str, Path], fake_image_folder: Path, tmp_path: Path
) -> None:
    runs = [str(trained_runs[k]) for k in ("att2", "vgg")]
    args = ["transfer", *runs, "--data", "image-folder", "--root", str(fake_image_folder), "--folds", "3"]
    args += ["--data-option", "train_fraction=0.5", "--out", str(tmp_path)]
    assert main(args) == 0
    assert header(tmp_path / "transfer.csv") == ["model", "dataset", "accuracy"]
    rows = read_csv(tmp_path / "transfer.csv")
    assert [(r["model"], r["dataset"]) for r in rows] == [("att2", "image-folder"), ("vgg", "image-folder")]
    # handwritten 0 / 1 / 7 on plain backgrounds: features of a cluttered-digit model beat chance (1/3)
    assert all(float(r["accuracy"]) > 0.4 for r in rows)
    details = json.loads((tmp_path / "transfer.json").read_text())
    assert (
        details[0]["features"] == 2 * 64 and details[1]["features"] == 64
    )  # descriptors vs penultimate layer
    cached = sorted((tmp_path / "features").glob("*.safetensors"))
    assert len(cached) == 4  # 2 models x (train, test)
    stamps = [p.stat().st_mtime_ns for p in cached]
    assert main(args) == 0
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    assert read_csv(tmp_path / "transfer.csv") == rows


def test_transfer_tells_two_image_folders_apart(
    trained_runs: dict[str, Path], fake_image_folder: Path, tmp_path: Path, capsys
) -> None:
    import shutil

    shutil.copytree(fake_image_folder, tmp_path / "digits-b")
    args = ["transfer", str(trained_runs["vgg"]), "--folds", "2", "--data-option", "train_fraction=0.5"]
    for root in (fake_image_folder, tmp_path / "digits-b"):
        args += ["--data", "image-folder", "--root", str(root)]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    rows = read_csv(tmp_path / "out" / "transfer.csv")
    assert [r["dataset"] for r in rows] == [f"image-folder:{fake_image_folder.name}", "image-folder:digits-b"]
    details = json.loads((tmp_path / "out" / "transfer.json").read_text())
    assert [d["root"] for d in details] == [str(fake_image_folder), str(tmp_path / "digits-b")]
    same = ["transfer", str(trained_runs["vgg"]), "--data", "image-folder", "--data", "image-folder"]
    assert main([*same, "--out", str(tmp_path / "again")]) == 2
    assert "given twice with the same folder" in capsys.readouterr().err


def test_transfer_rejects_unpaired_roots(trained_runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    args = [
        "transfer",
        str(trained_runs["vgg"]),
        "--data",
        "image-folder",
        "--data",
        "image-folder",
        "--root",
        "x",
    ]
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert "one --root per --data" in capsys.readouterr().err


def test_visualize_image_files_of_any_size_and_mode(trained_runs: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    files = []
    for i, (mode, size) in enumerate(
        (("RGB", (50, 30)), ("L", (17, 23)), ("RGBA", (64, 64)), ("P", (40, 41)))
    ):
        path = tmp_path / f"picture{i}.png"
        Image.new(mode, size, color=100 if mode in ("L", "P") else (10 * i, 200, 30, 255)[: len(mode)]).save(
            path
        )
        files.append(str(path))
    out = tmp_path / "vis"
    args = ["visualize", str(trained_runs["att2"]), "--images", *files, "--cam", str(trained_runs["gap"])]
    assert main([*args, "--gradcam-backend", "own", "--out", str(out)]) == 0
    report = json.loads((out / "attention.json").read_text())
    assert report["model"] == "att2" and len(report["images"]) == 4
    assert report["images"][0]["panels"] == ["conv10", "conv13", "mean", "CAM (gap)", "Grad-CAM"]
    assert (report["images"][1]["height"], report["images"][1]["width"]) == (23, 17)
    assert (out / "attention.png").stat().st_size > 5000


def test_visualize_dataset_images(trained_runs: dict[str, Path], tmp_path: Path) -> None:
    args = [
        "visualize",
        str(trained_runs["gap"]),
        "--data",
        "cluttered-digits",
        "--count",
        "3",
        *data_option_flags(),
    ]
    assert main([*args, "--no-gradcam", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "attention.json").read_text())
    assert [r["panels"] for r in report["images"]] == [["CAM conv13"]] * 3
    assert all(r["label"] is not None for r in report["images"])


def test_visualize_rejects_a_non_gap_cam_checkpoint(
    trained_runs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    args = ["visualize", str(trained_runs["att2"]), "--data", "cluttered-digits", *data_option_flags()]
    assert main([*args, "--cam", str(trained_runs["vgg"]), "--out", str(tmp_path)]) == 2
    assert "vgg_gap" in capsys.readouterr().err


def test_eval_missing_checkpoint_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert (
        main(["eval", str(tmp_path / "nothing"), "--data", "cluttered-digits", "--out", str(tmp_path)]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("ltpa eval: error: no checkpoint") and len(err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("command", ["eval", "attack", "localize", "segment", "transfer", "visualize"])
def test_every_evaluation_command_runs_with_only_a_run_folder(
    command: str, tmp_path: Path, trained_runs: dict[str, Path], single_thread: None
) -> None:
    """The run's checkpoint records its data, folder and options: no --data needed (on the embedded data)."""
    from ltpa.checkpoint import load_model, save_checkpoint

    run = tmp_path / "run"
    config = {"data": "cluttered-digits", "data_options": CLUTTERED_OPTIONS}
    save_checkpoint(run / "last", load_model(trained_runs["att2"]), epoch=1, config=config)
    extra = {
        "attack": ["--eps", "0,2"],
        "transfer": ["--folds", "2", "--limit", "60"],
        "visualize": ["--count", "2"],
    }
    out = tmp_path / command
    assert main([command, str(run), *extra.get(command, []), "--out", str(out)]) == 0
    assert any(out.iterdir())


def test_eval_warns_about_other_classes_notes_precision_and_keeps_figures_and_entries_together(
    trained_runs: dict[str, Path], fake_image_folder: Path, tmp_path: Path, capsys
) -> None:
    from ltpa.checkpoint import read_sidecar

    out = tmp_path / "eval"
    runs = [str(trained_runs[k]) for k in ("att2", "vgg")]
    assert main(["eval", *runs, "--data", "cluttered-digits", *data_option_flags(), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "labels are compared by index" not in err  # its own classes
    amp = read_sidecar(trained_runs["att2"])["config"].get("amp")
    assert ("autocast; ltpa eval computes in fp32" in err) == (amp in ("bf16", "fp16"))
    assert json.loads((out / "eval.json").read_text())["att2"]["precision"] == "fp32"
    (out / "confusion_mine.png").write_bytes(b"a user's file")
    # a 10-class model on a 3-class folder: scored by index, with a warning
    args = ["eval", runs[1], "--data", "image-folder", "--root", str(fake_image_folder), "--out", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "vgg was trained on 10 classes" in err and "but image-folder test has 3 (one, seven, zero)" in err
    assert "labels are compared by index" in err
    # the earlier evaluation's run keeps both its entry and its figure: every figure there has its entry
    assert set(json.loads((out / "eval.json").read_text())) >= {"att2", "vgg"}
    assert (out / "confusion_att2.png").is_file()
    assert (out / "confusion_vgg.png").is_file() and (
        out / "confusion_mine.png"
    ).read_bytes() == b"a user's file"


def test_localize_and_segment_take_a_users_own_masks(trained_runs: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    # pictures of one's own, laid out by split, with a mask per picture in a tree beside them
    generator = torch.Generator().manual_seed(0)
    for split, n in (("train", 2), ("test", 3)):
        for name in ("a", "b"):
            for i in range(n):
                image = torch.randint(0, 60, (20, 24, 3), generator=generator, dtype=torch.uint8)
                image[5:12, 6:16] = 230
                mask = torch.zeros(20, 24, dtype=torch.uint8)
                mask[5:12, 6:16] = 255
                for folder, array in (("pictures", image), ("masks", mask)):
                    path = tmp_path / folder / split / name / f"{name}{i}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(array.numpy()).save(path)
    data = ["--data", "image-folder", "--root", str(tmp_path / "pictures")]
    data += ["--data-option", f"masks={tmp_path / 'masks'}"]
    assert main(["localize", str(trained_runs["att2"]), *data, "--out", str(tmp_path / "loc")]) == 0
    report = json.loads((tmp_path / "loc" / "localize.json").read_text())
    assert report["mask_area_fraction"] == pytest.approx(
        70 / 480, abs=0.02
    )  # the 7x10 box of 20x24, at 16 px
    rows = read_csv(tmp_path / "loc" / "localize.csv")
    assert {r["level"] for r in rows} >= {"uniform"}
    assert main(["segment", str(trained_runs["att2"]), *data, "--out", str(tmp_path / "seg")]) == 0
