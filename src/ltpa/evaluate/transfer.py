"""Transfer to unseen datasets: frozen features and a linear classifier (the "6 unseen datasets", method §4.2).

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391. The paper
extracts one fixed feature vector per image from CIFAR-trained models (the concatenated attention descriptors
for attention models, the penultimate layer for baselines: exactly
``model.forward_head(model.forward_features(x), pre_logits=True)``) and classifies
the target datasets with a linear classifier; classifier, splits and numbers are unknown (method §6.2), so:

* images are resized to the model's input side (32 for CIFAR models), features extracted once per model,
  dataset and split and cached as safetensors;
* a scikit-learn logistic regression on standardised features, its regularisation ``C`` chosen by stratified
  k-fold cross-validation on the training split only;
* the test split's accuracy is reported per dataset and model.

STL-10 read directly through the CIFAR-10 head is ``ltpa eval CKPT --data stl10`` (method §4.2).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ltpa.errors import LTPAError
from ltpa.evaluate._data import (
    EvalData,
    batch_slices,
    eval_mode,
    load_checkpoints,
    load_eval_data,
    model_device,
    progress_bar,
    to_model_input,
)
from ltpa.evaluate._results import format_table, save_figure, write_csv, write_json
from ltpa.models import LTPAModel
from ltpa.utils import log as logger
from ltpa.utils import safe_filename

__all__ = [
    "DEFAULT_CS",
    "TRANSFER_COLUMNS",
    "LinearProbe",
    "TransferConfig",
    "cached_features",
    "dataset_labels",
    "extract_features",
    "fit_linear_probe",
    "run_transfer",
]

TRANSFER_COLUMNS: tuple[str, ...] = ("model", "dataset", "accuracy")
DEFAULT_CS: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


@torch.no_grad()
def extract_features(
    model: LTPAModel, images: torch.Tensor, *, batch_size: int = 256, progress: bool | None = None
) -> torch.Tensor:
    """Frozen transfer features, the pre-logits ``forward_head(forward_features(x), pre_logits=True)`` (eval
    mode), images fed at the model's input side.

    Shape:
        - images: (N, 3, H, W) uint8 or float [0, 1]
        - output: (N, F) float32 on the CPU
    """
    device = model_device(model)
    size = int(getattr(model, "img_size", images.shape[-1]))
    chunks = []
    with eval_mode(model):
        for sl in progress_bar(batch_slices(len(images), batch_size), desc="features", progress=progress):
            trunk = model.forward_features(to_model_input(images[sl], size, device))
            chunks.append(model.forward_head(trunk, pre_logits=True).float().cpu())
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


def _checkpoint_identity(model: nn.Module) -> dict[str, Any]:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {
        "model_name": getattr(model, "model_name", type(model).__name__),
        "model_kwargs": (getattr(model, "checkpoint", None) or {}).get("model_kwargs"),
        "weights": digest.hexdigest(),
    }


def _data_fingerprint(root: str | os.PathLike[str] | None) -> str | None:
    """A digest of every file's relative path, size and modification time under ``root`` (or of ``root``
    itself when it is a file): data changed in place gives another cache key. None for generated data."""
    if root is None:
        return None
    base = Path(root)
    if not base.exists():
        return None  # the reader reports the missing folder with its own message
    files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(base) if path != base else path.name}\0{stat.st_size}\0".encode())
        digest.update(f"{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cached_features(
    model: LTPAModel,
    data: str,
    root: str | os.PathLike[str] | None,
    split: str,
    *,
    cache_dir: str | os.PathLike[str],
    limit: int | None = None,
    options: dict[str, Any] | None = None,
    batch_size: int = 256,
    progress: bool | None = None,
    data_cache: dict[str, EvalData] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Features and labels of one split, read from ``cache_dir`` or extracted once and stored there.

    The cache key covers the weights, the dataset, its root and the files in it (paths, sizes, modification
    times), split, options, limit and the input side.
    ``data_cache`` (any dict, shared across calls) keeps the images read for one model for the next, so
    that several models read (or generate) each split once.

    Returns:
        ``(features (N, F), labels (N,), classes)``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ltpa.checkpoint import atomic_write, save_weights

    key = {
        "model": _checkpoint_identity(model),
        "data": data,
        "root": str(Path(root).resolve()) if root is not None else None,
        "files": _data_fingerprint(root),
        "split": split,
        "options": options or {},
        "limit": limit,
        "img_size": int(getattr(model, "img_size", 0)),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    run = safe_filename(str(getattr(model, "run_name", type(model).__name__)))
    path = Path(cache_dir) / f"{run}-{safe_filename(data)}-{split}-{digest}.safetensors"
    if path.is_file():
        try:
            tensors = load_file(str(path))
            meta = json.loads(path.with_suffix(".json").read_text())
            return tensors["features"], tensors["labels"], list(meta["classes"])
        except (OSError, ValueError, KeyError, SafetensorError) as err:  # a truncated cache among them
            raise LTPAError(
                f"feature cache {path} is unreadable ({err}); delete it to extract again"
            ) from err
    data_key = json.dumps({k: v for k, v in key.items() if k != "model"}, sort_keys=True, default=str)
    loaded = (data_cache or {}).get(data_key)
    if loaded is None:
        loaded = load_eval_data(
            data,
            root,
            split=split,
            img_size=model.img_size,
            limit=limit,
            options=options,
            progress=progress,
        )
        if data_cache is not None:
            data_cache[data_key] = loaded
    feats = extract_features(model, loaded.images, batch_size=batch_size, progress=progress)
    labels = loaded.labels.clone()
    tensors = {"features": feats.contiguous(), "labels": labels.contiguous()}
    sidecar = json.dumps({**key, "classes": loaded.classes}, indent=2, default=str)
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(sidecar))
    atomic_write(path, lambda tmp: save_weights(tensors, tmp))
    return feats, labels, loaded.classes


@dataclass
class LinearProbe:
    """A fitted linear classifier and its scores.

    Attributes:
        accuracy: test accuracy in [0, 1].
        C: the chosen inverse regularisation strength.
        cv_accuracy: mean cross-validation accuracy of that ``C`` on the training split.
        folds: number of cross-validation folds.
        n_train: training images.
        n_test: test images.
    """

    accuracy: float
    C: float
    cv_accuracy: float
    folds: int
    n_train: int
    n_test: int


def fit_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    Cs: Sequence[float] = DEFAULT_CS,
    folds: int = 5,
    seed: int = 0,
    max_iter: int = 2000,
) -> LinearProbe:
    """Logistic regression on standardised features, ``C`` chosen by stratified k-fold CV on the train split.

    Uses ``min(folds, smallest class count)`` folds (at least 2).

    Raises:
        LTPAError: when a class has fewer than 2 training images, or the training split has one class.

    Shape:
        - train_x: (N, F); train_y: (N,); test_x: (M, F); test_y: (M,)
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = train_x.double().numpy(), train_y.numpy()
    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        raise LTPAError("the training split has a single class; a classifier needs at least two")
    k = min(folds, int(counts.min()))
    if k < 2:
        raise LTPAError(
            f"class {int(classes[counts.argmin()])} has {int(counts.min())} training image(s); "
            "cross-validation needs at least 2 per class (raise the train share of the split)"
        )
    search = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter)),
        {"logisticregression__C": list(Cs)},
        cv=StratifiedKFold(n_splits=k, shuffle=True, random_state=seed),
        scoring="accuracy",
        refit=True,
    )
    search.fit(x, y)
    accuracy = (
        float((search.predict(test_x.double().numpy()) == test_y.numpy()).mean())
        if len(test_y)
        else float("nan")
    )
    return LinearProbe(
        accuracy=accuracy,
        C=float(search.best_params_["logisticregression__C"]),
        cv_accuracy=float(search.best_score_),
        folds=k,
        n_train=len(y),
        n_test=len(test_y),
    )


@dataclass
class TransferConfig:
    """Settings of ``ltpa transfer``.

    Attributes:
        datasets: ``(name, root)`` pairs (root None: the dataset's default place).
        train_split: split the classifier is fitted (and cross-validated) on.
        test_split: split it is scored on.
        limit: only the first N images of each split.
        data_options: further ``build_dataset`` options (for every dataset).
        Cs: candidate inverse regularisation strengths.
        folds: cross-validation folds.
        seed: seed of the fold assignment.
        batch_size: images per forward pass.
        device: ``cpu``, ``cuda`` or ``auto``.
        which: ``last`` or ``best`` checkpoint of a run folder.
        cache: feature cache folder (default ``<out>/features``).
        out: folder for ``transfer.csv``, ``transfer.json`` and ``transfer.png``.
        progress: progress bars (None: on a terminal).
    """

    datasets: list[tuple[str, str | None]] = field(default_factory=list)
    train_split: str = "train"
    test_split: str = "test"
    limit: int | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    Cs: list[float] = field(default_factory=lambda: list(DEFAULT_CS))
    folds: int = 5
    seed: int = 0
    batch_size: int = 256
    device: str = "cpu"
    which: str = "last"
    cache: str | None = None
    out: str = "runs/transfer"
    progress: bool | None = None


def plot_transfer(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Grouped bars: test accuracy per dataset, one bar per model."""
    from matplotlib.figure import Figure

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig = Figure(figsize=(max(5.0, 1.6 * len(datasets) * max(1, len(models)) ** 0.5), 4))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(models))
    for j, name in enumerate(models):
        values = {r["dataset"]: r["accuracy"] for r in rows if r["model"] == name}
        xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(datasets))]
        ax.bar(xs, [100 * values.get(d, float("nan")) for d in datasets], width=width, label=name)
    ax.set_xticks(range(len(datasets)), labels=datasets)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("linear classifier on frozen features")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def dataset_labels(datasets: Sequence[tuple[str, str | None]]) -> list[str]:
    """One label per ``(name, root)`` pair: the name, or ``name:<folder>`` where a name is given more than
    once (two image folders), with the whole root where the folder names clash too."""
    counts = Counter(name for name, _ in datasets)
    labels = [
        f"{name}:{Path(root).name or root}" if counts[name] > 1 and root is not None else name
        for name, root in datasets
    ]
    clashing = {label for label, n in Counter(labels).items() if n > 1}
    return [
        f"{name}:{root}" if label in clashing and root is not None else label
        for label, (name, root) in zip(labels, datasets)
    ]


def run_transfer(
    checkpoints: Sequence[str | os.PathLike[str]], config: TransferConfig
) -> list[dict[str, Any]]:
    """``ltpa transfer``: linear-classifier accuracy of each checkpoint's frozen features on each dataset.

    Writes ``transfer.csv`` (``model,dataset,accuracy``), ``transfer.json`` (with the chosen ``C``, the CV
    accuracy and the split sizes) and ``transfer.png`` under ``config.out``, and prints a table. A dataset
    name given twice (two image folders) is told apart by its folder (:func:`dataset_labels`).
    """
    if not config.datasets:
        raise LTPAError("no dataset given; pass --data NAME (and --root DIR) at least once")
    labels = dataset_labels(config.datasets)
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise LTPAError(f"dataset {repeated[0]} is given twice with the same folder; give each one once")
    models = load_checkpoints(checkpoints, which=config.which, device=config.device)
    out = Path(config.out)
    cache = Path(config.cache) if config.cache else out / "features"
    rows: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    for (name, root), label in zip(config.datasets, labels):
        data_cache: dict[str, EvalData] = {}  # one dataset's splits at a time, shared by the models
        for model in models:
            common: dict[str, Any] = {
                "cache_dir": cache,
                "limit": config.limit,
                "options": config.data_options,
                "batch_size": config.batch_size,
                "progress": config.progress,
                "data_cache": data_cache,
            }
            train_x, train_y, classes = cached_features(model, name, root, config.train_split, **common)
            test_x, test_y, _ = cached_features(model, name, root, config.test_split, **common)
            probe = fit_linear_probe(
                train_x, train_y, test_x, test_y, Cs=config.Cs, folds=config.folds, seed=config.seed
            )
            rows.append({"model": model.run_name, "dataset": label, "accuracy": probe.accuracy})
            details.append(
                {
                    "model": model.run_name,
                    "dataset": label,
                    "root": root,
                    "classes": len(classes),
                    "features": int(train_x.shape[1]),
                    **vars(probe),
                }
            )
    write_csv(out / "transfer.csv", rows, TRANSFER_COLUMNS)
    write_json(out / "transfer.json", details)
    plot_transfer(rows, out / "transfer.png")
    logger.info(
        format_table(
            details,
            ["model", "dataset", "features", "n_train", "n_test", "C", "accuracy"],
            percent=["accuracy"],
        )
    )
    logger.info(f"wrote {out / 'transfer.csv'} and {out / 'transfer.png'}")
    return rows
