"""Shared fixtures of the evaluation tests: small checkpoints trained on cluttered digits, and fake datasets.

The checkpoints are narrow (width 0.125) models at 16x16 input, trained for a fixed number of Adam steps
without dropout (a few seconds each on a CPU), enough to be well above chance so that attacks and maps mean
something.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# Cluttered digits small and easy enough to learn in seconds; every test reads the same test split.
CLUTTERED_OPTIONS: dict[str, Any] = {
    "img_size": 16,
    "num_train": 768,
    "num_test": 96,
    "num_fragments": 0,
    "noise": 0.03,
    "object_scale": (0.6, 0.8),
}
# model name -> Adam steps (batch 32); the baseline VGG is cheaper per step
# (160 baseline steps reached 56% on an AMD EPYC but 25% on an Intel Xeon: 240 clear 0.3 on both)
TRAINED_MODELS: dict[str, int] = {"vgg_att2_concat_pc": 110, "vgg": 240, "vgg_gap": 90}
# Training picks its thread count from the machine's load unless told; tests that compare two runs bit for
# bit need both to use the same count, whatever else runs on the machine.
os.environ.setdefault("LTPA_THREADS", str(torch.get_num_threads()))


def tiny_train_config(tmp_path: Path, name: str = "run", **overrides: Any) -> Any:
    """A TrainConfig that trains a width-1/8 VGG on 192 generated cluttered digits in seconds."""
    from ltpa.config import TrainConfig

    base: dict[str, Any] = dict(
        model="vgg",
        data="cluttered-digits",
        data_options={"num_train": 192, "num_test": 64},
        width=0.125,
        epochs=2,
        batch_size=32,
        optimizer="sgd",
        lr_schedule="step",
        lr=0.05,
        dampening=0.0,
        lr_decay=0.0,
        lr_milestones=[2],
        lr_factors=[0.5],
        out=str(tmp_path / name),
        quiet=True,
    )
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Runs a test with one thread in torch and in BLAS/OpenMP pools (scikit-learn): on a shared, busy CPU,
    spinning worker threads make these small problems many times slower."""
    from threadpoolctl import threadpool_limits

    before, env = torch.get_num_threads(), os.environ.get("LTPA_THREADS")
    torch.set_num_threads(1)
    os.environ["LTPA_THREADS"] = "1"  # and ltpa.train.fit keeps it so
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)
        if env is None:
            os.environ.pop("LTPA_THREADS", None)
        else:
            os.environ["LTPA_THREADS"] = env


def data_option_flags(options: dict[str, Any] | None = None) -> list[str]:
    """``--data-option KEY=VALUE`` flags for ``options`` (default: the cluttered test data)."""
    flags: list[str] = []
    for key, value in (options or CLUTTERED_OPTIONS).items():
        text = f"[{', '.join(str(v) for v in value)}]" if isinstance(value, tuple) else str(value)
        flags += ["--data-option", f"{key}={text}"]
    return flags


def _train(name: str, steps: int, images: torch.Tensor, labels: torch.Tensor) -> torch.nn.Module:
    from ltpa import create_model

    torch.manual_seed(0)
    model = create_model(name, width=0.125, num_classes=10, img_size=16, drop_scale=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    x = images.float() / 255.0
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=generator)
        loss = F.cross_entropy(model(x[idx]), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run folders ``att2``, ``vgg`` and ``gap``, each with a ``last`` checkpoint (cluttered digits)."""
    from ltpa.checkpoint import save_checkpoint
    from ltpa.data import build_dataset, load_tensors

    train = build_dataset("cluttered-digits", split="train", **CLUTTERED_OPTIONS)
    images, labels, _ = load_tensors(train, progress=False)
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for short, (name, steps) in zip(("att2", "vgg", "gap"), TRAINED_MODELS.items()):
            model = _train(name, steps, images, labels)
            save_checkpoint(root / short / "last", model, epoch=1)
            runs[short] = root / short
    finally:
        torch.set_num_threads(threads)
    return runs


def _write_image(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="session")
def fake_object_discovery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``Data/{Airplane100,Car100,Horse100}`` with 5 images of different sizes each, a bright ellipse on a
    dark background, and its mask in ``GroundTruth``; one image of each class has an empty mask (skipped)."""
    root = tmp_path_factory.mktemp("objdisc")
    rng = np.random.default_rng(0)
    for c, folder in enumerate(("Airplane100", "Car100", "Horse100")):
        for i in range(5):
            h, w = 40 + 7 * i + c, 56 - 5 * i
            yy, xx = np.mgrid[:h, :w]
            cy, cx = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65)
            mask = ((yy - cy) / (0.25 * h)) ** 2 + ((xx - cx) / (0.3 * w)) ** 2 <= 1
            if i == 4:
                mask[:] = False
            image = rng.integers(0, 60, size=(h, w, 3)).astype(np.uint8)
            image[mask] = np.array([220, 180 - 60 * c, 40 + 80 * c], dtype=np.uint8)
            _write_image(root / "Data" / folder / f"img{i:03d}.jpg", image)
            _write_image(
                root / "Data" / folder / "GroundTruth" / f"img{i:03d}.png", (mask * 255).astype(np.uint8)
            )
    return root


@pytest.fixture(scope="session")
def fake_image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes (handwritten 0, 1 and 7 from scikit-learn, drawn large on a random background colour) of
    16 pictures each, of assorted sizes, saved as JPEG and PNG: a small unseen dataset for ``transfer``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(1)
    for name, digit in (("zero", 0), ("one", 1), ("seven", 7)):
        sources = np.flatnonzero(digits.target == digit)[
            -16:
        ]  # the last ones: not all in the training objects
        for i, index in enumerate(sources):
            h, w = 28 + 2 * i, 56 - 2 * i
            glyph = Image.fromarray((digits.images[index] * 15.9).astype(np.uint8)).resize(
                (w // 2, h // 2 + 4)
            )
            alpha = np.zeros((h, w), dtype=np.float32)
            y0, x0 = rng.integers(0, h - h // 2 - 4), rng.integers(0, w - w // 2)
            alpha[y0 : y0 + h // 2 + 4, x0 : x0 + w // 2] = np.asarray(glyph, dtype=np.float32) / 255.0
            back, fore = rng.uniform(0, 80, 3), rng.uniform(170, 255, 3)
            image = back + alpha[..., None] * (fore - back)
            suffix = ".png" if i % 2 else ".jpg"
            _write_image(root / name / f"{name}_{i}{suffix}", image.round().astype(np.uint8))
    return root


def cache_hub_repo(folder: Path, cache: Path, repo: str) -> None:
    """Lays out ``folder``'s files as the Hugging Face cache holds a download of ``repo`` (``org/name``)."""
    org, name = repo.split("/")
    root = cache / f"models--{org}--{name}"
    snapshot = root / "snapshots" / ("1" * 40)
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("1" * 40)
    for file in folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
