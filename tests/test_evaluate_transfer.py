"""The linear probe of the transfer experiment and its feature cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ltpa.errors import LTPAError
from ltpa.evaluate import fit_linear_probe

pytestmark = pytest.mark.usefixtures("single_thread")


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.tensor([[4.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 4.0, 0.0]])
    return centres[y] + torch.randn(n, 4, generator=g), y


def test_probe_separates_separable_classes_and_picks_c_from_the_grid() -> None:
    train_x, train_y = blobs(60, 0)
    test_x, test_y = blobs(30, 1)
    probe = fit_linear_probe(train_x, train_y, test_x, test_y, Cs=[0.01, 1.0], folds=4)
    assert probe.accuracy >= 0.95
    assert probe.C in (0.01, 1.0) and probe.folds == 4
    assert (probe.n_train, probe.n_test) == (60, 30)


def test_probe_needs_two_training_images_per_class() -> None:
    x, y = blobs(7, 0)
    y[-1] = 5  # a class with one image
    with pytest.raises(LTPAError, match="at least 2 per class"):
        fit_linear_probe(x, y, x, y)
    with pytest.raises(LTPAError, match="single class"):
        fit_linear_probe(x, torch.zeros(7, dtype=torch.long), x, y)


def test_features_are_extracted_once_then_read_from_the_cache(
    monkeypatch: pytest.MonkeyPatch, fake_image_folder: Path, tmp_path: Path
) -> None:
    from ltpa import create_model
    from ltpa.evaluate import transfer

    torch.manual_seed(0)
    model = create_model("vgg", width=0.0625, num_classes=3, img_size=16).eval()
    first = transfer.cached_features(model, "image-folder", fake_image_folder, "test", cache_dir=tmp_path)
    assert first[0].shape == (len(first[1]), 32) and first[2] == ["one", "seven", "zero"]

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("features extracted twice")

    monkeypatch.setattr(transfer, "extract_features", fail)
    second = transfer.cached_features(model, "image-folder", fake_image_folder, "test", cache_dir=tmp_path)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1]) and first[2] == second[2]
    # other weights: another cache entry
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    with pytest.raises(AssertionError, match="twice"):
        transfer.cached_features(model, "image-folder", fake_image_folder, "test", cache_dir=tmp_path)


def test_changed_data_files_are_extracted_again(
    monkeypatch: pytest.MonkeyPatch, fake_image_folder: Path, tmp_path: Path
) -> None:
    import shutil

    from ltpa import create_model
    from ltpa.evaluate import transfer

    root = tmp_path / "data"
    shutil.copytree(fake_image_folder, root)
    torch.manual_seed(0)
    model = create_model("vgg", width=0.0625, num_classes=3, img_size=16).eval()
    transfer.cached_features(model, "image-folder", root, "test", cache_dir=tmp_path / "cache")
    calls = []
    original = transfer.extract_features
    monkeypatch.setattr(transfer, "extract_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    transfer.cached_features(model, "image-folder", root, "test", cache_dir=tmp_path / "cache")
    assert calls == []  # unchanged data: read from the cache
    victim = sorted((root / "seven").iterdir())[0]
    victim.unlink()  # the same folder, one image fewer: the old features could be stale
    transfer.cached_features(model, "image-folder", root, "test", cache_dir=tmp_path / "cache")
    assert calls == [1]


def test_a_shared_data_cache_reads_each_split_once_for_several_models(
    monkeypatch: pytest.MonkeyPatch, fake_image_folder: Path, tmp_path: Path
) -> None:
    from ltpa import create_model
    from ltpa.evaluate import transfer

    reads: list[str] = []
    real = transfer.load_eval_data

    def counting(name: str, *args: object, **kwargs: object) -> object:
        reads.append(str(kwargs.get("split")))
        return real(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(transfer, "load_eval_data", counting)
    shared: dict[str, transfer.EvalData] = {}
    feats = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model("vgg", width=0.0625, num_classes=3, img_size=16).eval()
        model.run_name = f"m{seed}"
        for split in ("train", "test"):
            kw = {"cache_dir": tmp_path, "data_cache": shared}
            feats.append(transfer.cached_features(model, "image-folder", fake_image_folder, split, **kw)[0])
    assert reads == ["train", "test"]  # the second model reuses both splits
    assert not torch.equal(feats[1], feats[3])  # but extracts its own features


def test_dataset_labels_tell_repeated_names_apart_by_folder() -> None:
    from ltpa.evaluate import transfer

    assert transfer.dataset_labels([("cifar10", None), ("image-folder", "data/caltech101")]) == [
        "cifar10",
        "image-folder",
    ]
    assert transfer.dataset_labels([("image-folder", "data/a"), ("image-folder", "data/b/")]) == [
        "image-folder:a",
        "image-folder:b",
    ]
    assert transfer.dataset_labels([("image-folder", "x/a"), ("image-folder", "y/a")]) == [
        "image-folder:x/a",
        "image-folder:y/a",
    ]
