"""Top-1 accuracy, per-class accuracy and confusion matrices (method §3.5 and §4.1), and STL-10 scored directly
through a CIFAR-10 head (method §4.2).

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391.

Evaluation is a single centre view with BN in eval mode and dropout off; error = 1 - accuracy. A CIFAR-10
model evaluated on ``stl10`` reads STL-10 with ``cifar10_labels=True``: the nine shared classes relabelled to
CIFAR-10 indices, the monkeys dropped, and the prediction taken over all ten CIFAR-10 outputs (a "frog"
answer counts as wrong).

    from ltpa.evaluate import EvalConfig, run_eval
    results = run_eval(["runs/att2"], EvalConfig(data="cluttered-digits", out="runs/eval"))
    results["att2"].accuracy
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ltpa.errors import LTPAError
from ltpa.evaluate._data import (
    EvalSettings,
    batch_slices,
    eval_mode,
    load_checkpoints,
    model_device,
    progress_bar,
    to_model_input,
)
from ltpa.evaluate._results import format_table, save_figure, write_json
from ltpa.utils import log as logger
from ltpa.utils import safe_filename

__all__ = [
    "AccuracyResult",
    "EvalConfig",
    "accuracy_from_predictions",
    "confusion_figure",
    "evaluate_accuracy",
    "plot_confusion",
    "predict",
    "run_eval",
]


@dataclass
class EvalConfig(EvalSettings):
    """Settings of ``ltpa eval``: those of :class:`EvalSettings`, with ``out`` the folder for ``eval.json`` and
    the confusion figures."""

    out: str = "runs/eval"


@dataclass
class AccuracyResult:
    """Accuracy of one model on one labelled set.

    Attributes:
        accuracy: top-1 accuracy in [0, 1].
        error: 1 - accuracy.
        n: number of images.
        per_class: accuracy per class name (None for a class without images).
        confusion: int64 (K_true, K_pred) counts, rows = true class.
        classes: class names of the rows.
    """

    accuracy: float
    error: float
    n: int
    per_class: dict[str, float | None]
    confusion: torch.Tensor
    classes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "error": self.error,
            "n": self.n,
            "per_class": dict(self.per_class),
            "classes": list(self.classes),
            "confusion": self.confusion.tolist(),
        }


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = 256,
    progress: bool | None = None,
    desc: str = "predict",
) -> torch.Tensor:
    """Logits of ``model`` (in eval mode, restored afterwards) on the CPU.

    Images are fed in consecutive batches of ``batch_size`` at the model's input side, on the model's device.

    Shape:
        - images: (N, 3, H, W) uint8 or float [0, 1]
        - output: (N, K) float32
    """
    device = model_device(model)
    size = int(getattr(model, "img_size", images.shape[-1]))
    chunks = []
    with eval_mode(model):
        for sl in progress_bar(batch_slices(len(images), batch_size), desc=desc, progress=progress):
            chunks.append(model(to_model_input(images[sl], size, device)).float().cpu())
    if not chunks:
        return torch.empty(0, int(getattr(model, "num_classes", 0)))
    return torch.cat(chunks)


def accuracy_from_predictions(
    predictions: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], *, num_outputs: int | None = None
) -> AccuracyResult:
    """Accuracy, per-class accuracy and the confusion matrix of predicted class indices.

    Args:
        predictions: (N,) predicted class indices.
        labels: (N,) true class indices.
        classes: names of the true classes (their count K sets the rows).
        num_outputs: number of classes the model can predict (columns; default K).
    """
    k_true = len(classes)
    k_pred = max(num_outputs or k_true, k_true)
    n = int(labels.numel())
    if n == 0:
        raise LTPAError("no images to evaluate")
    predictions, labels = predictions.long().cpu(), labels.long().cpu()
    confusion = torch.zeros(k_true, k_pred, dtype=torch.long)
    confusion.index_put_(
        (labels, predictions.clamp(0, k_pred - 1)), torch.ones(n, dtype=torch.long), accumulate=True
    )
    correct = (predictions == labels).sum().item()
    per_class: dict[str, float | None] = {}
    for index, name in enumerate(classes):
        total = int(confusion[index].sum())
        per_class[name] = float(confusion[index, index]) / total if total else None
    accuracy = correct / n
    return AccuracyResult(accuracy, 1.0 - accuracy, n, per_class, confusion, list(classes))


def evaluate_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    classes: Sequence[str] | None = None,
    batch_size: int = 256,
    progress: bool | None = None,
) -> AccuracyResult:
    """Top-1 accuracy, per-class accuracy and confusion matrix of ``model`` on ``images``.

    Shape:
        - images: (N, 3, H, W) uint8 or float [0, 1]
        - labels: (N,)
    """
    num_outputs = int(getattr(model, "num_classes", int(labels.max()) + 1))
    names = list(classes) if classes is not None else [str(i) for i in range(num_outputs)]
    logits = predict(model, images, batch_size=batch_size, progress=progress, desc="eval")
    return accuracy_from_predictions(logits.argmax(dim=1), labels, names, num_outputs=logits.shape[1])


def plot_confusion(result: AccuracyResult, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Writes :func:`confusion_figure` as a PNG (atomically)."""
    return save_figure(confusion_figure(result, title=title), path)


def confusion_figure(result: AccuracyResult, *, title: str = "") -> Any:
    """Row-normalised confusion matrix (counts written in the cells for up to 12 classes), a matplotlib
    ``Figure``."""
    from matplotlib.figure import Figure

    counts = result.confusion
    rows = counts.sum(dim=1, keepdim=True).clamp_min(1)
    share = (counts.float() / rows).numpy()
    k_true, k_pred = counts.shape
    side = min(12.0, 2.0 + 0.45 * max(k_true, k_pred))
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if max(k_true, k_pred) <= 30:
        ax.set_yticks(range(k_true), labels=result.classes, fontsize=8)
        pred_names = result.classes + [str(i) for i in range(k_true, k_pred)]
        ax.set_xticks(range(k_pred), labels=pred_names, fontsize=8, rotation=90)
    if max(k_true, k_pred) <= 12:
        for i in range(k_true):
            for j in range(k_pred):
                value = int(counts[i, j])
                if value:
                    ax.text(
                        j,
                        i,
                        str(value),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    score = f"accuracy {100 * result.accuracy:.2f}% (n={result.n} images)"
    ax.set_title(f"{title}: {score}" if title else score, fontsize=10)
    fig.tight_layout()
    return fig


def _earlier_report(path: Path) -> dict[str, Any]:
    """The entries of an ``eval.json`` an earlier ``ltpa eval`` wrote at ``path`` ({} when there is none).

    Raises:
        LTPAError: ``path`` holds a file that is not an ltpa evaluation report (it is never replaced).
    """
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        report = json.loads(path.read_text()) if path.is_file() and not path.is_symlink() else None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        report = None
    if not isinstance(report, dict) or not all(
        isinstance(entry, dict) and "accuracy" in entry and "confusion" in entry for entry in report.values()
    ):
        raise LTPAError(f"{path} is not an ltpa evaluation report; choose another --out (it is kept)")
    return report


def run_eval(checkpoints: Sequence[str | os.PathLike[str]], config: EvalConfig) -> dict[str, AccuracyResult]:
    """``ltpa eval``: accuracy of each checkpoint on ``config.data``.

    Writes ``eval.json`` (``{"<run>": {"accuracy", "error", "n", "per_class", "classes", "confusion",
    "dataset", "split"}}``) and ``confusion_<run>.png`` under ``config.out``, and prints a table. An
    ``eval.json`` already there keeps the entries of the runs not evaluated this time.

    Returns:
        The results by run name.
    """
    earlier = _earlier_report(Path(config.out) / "eval.json")  # refused before any work, if not ours
    models = load_checkpoints(checkpoints, which=config.which, device=config.device)
    datasets = config.datasets_for(models)
    out = Path(config.out)
    results: dict[str, AccuracyResult] = {}
    report: dict[str, Any] = {}
    for model, data in zip(models, datasets):
        result = evaluate_accuracy(
            model,
            data.images,
            data.labels,
            classes=data.classes,
            batch_size=config.batch_size,
            progress=config.progress,
        )
        results[model.run_name] = result
        report[model.run_name] = {
            **result.to_dict(),
            "dataset": config.data,
            "split": config.split,
            "options": data.options,
            "precision": "fp32",
        }
        trained_amp = ((getattr(model, "checkpoint", None) or {}).get("config") or {}).get("amp")
        if trained_amp in ("bf16", "fp16"):
            logger.info(
                f"note: {model.run_name}'s accuracy during training was measured under {trained_amp} autocast; "
                "ltpa eval computes in fp32, so the two can differ by a few images"
            )
        title = f"{model.run_name} on {config.data} ({config.split} split)"
        plot_confusion(result, out / f"confusion_{safe_filename(model.run_name)}.png", title=title)
    # evaluations into one folder add up: runs evaluated earlier keep their entries and confusion figures, so
    # every figure there belongs to an entry of eval.json
    write_json(out / "eval.json", {**earlier, **report})
    rows = [
        {"model": name, "n": r.n, "accuracy": r.accuracy, "error": r.error} for name, r in results.items()
    ]
    logger.info(format_table(rows, ["model", "n", "accuracy", "error"], percent=["accuracy", "error"]))
    logger.info(f"wrote {out / 'eval.json'} and confusion_*.png")
    return results
