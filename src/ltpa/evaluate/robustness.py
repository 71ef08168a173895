"""Robustness to adversarial images: FGSM and PGD, accuracy under attack and fooling rate (method §4.4).

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391. The paper claims
better robustness to the fast gradient sign method (Goodfellow et al. 2015) but gives neither code nor
protocol; we follow method §4.4's recommendation.

The attacks follow the torchattacks contract (CONTRIBUTING.md §9): images in [0, 1], normalisation inside the model, the
model in eval mode during the attack (each module's flag restored afterwards), gradients taken with respect to
the input only (parameter ``.grad`` untouched), adversarial images clipped to [0, 1]. ``eps`` of
:func:`fgsm` / :func:`pgd` is in [0, 1] pixel units (8/255 ...); :func:`attack_sweep`, ``attack.csv`` and the
CLI use 1/255 units (8 ...).

* FGSM: ``x' = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1)``.
* PGD (Madry et al. 2018, L-infinity): a uniform random start in the eps-ball, then ``steps`` signed-gradient
  steps of size ``alpha``, each projected back onto the eps-ball around ``x`` and onto [0, 1].
* Fooling rate: the share of the correctly classified clean images whose prediction changes under attack.

At eps 0 no attack runs: the images are the clean ones and the accuracy equals ``ltpa eval``'s exactly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
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
from ltpa.evaluate._results import format_table, model_colours, save_figure, write_csv
from ltpa.evaluate.accuracy import predict
from ltpa.utils import log as logger

__all__ = [
    "ATTACKS",
    "ATTACK_COLUMNS",
    "AttackConfig",
    "attack_figure",
    "attack_sweep",
    "fgsm",
    "input_gradient",
    "pgd",
    "plot_attack",
    "run_attack",
]

ATTACKS: tuple[str, ...] = ("fgsm", "pgd")
ATTACK_COLUMNS: tuple[str, ...] = ("model", "method", "eps", "accuracy", "fooling_rate")


def input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed cross-entropy with respect to the images only (the model's mode as it is).

    Shape:
        - images: (B, 3, H, W) float
        - output: (B, 3, H, W)
    """
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half precision to float32
        loss = F.cross_entropy(logits, labels.to(x.device), reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def _check_images(images: torch.Tensor, eps: float) -> None:
    if not images.is_floating_point():
        raise ValueError(f"attacks take float images in [0, 1], got {images.dtype}")
    if eps < 0 or not math.isfinite(eps):
        raise LTPAError(f"epsilon must be a finite number >= 0, got {eps}")


def _check_pgd(steps: int, alpha: float | None, *, unit: str = "") -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise LTPAError(f"PGD needs at least 1 step (--steps), got {steps!r}")
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise LTPAError(
            f"PGD step size (--alpha{unit}) must be a finite number > 0, got {alpha!r}; omit it for the "
            "default 2.5 * eps / steps"
        )


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """The fast gradient sign method: one signed-gradient step of size ``eps``, clipped to [0, 1].

    Args:
        model: classifier taking [0, 1] images; run in eval mode, flags restored afterwards.
        images: clean images in [0, 1].
        labels: (B,) true classes.
        eps: step in [0, 1] pixel units (e.g. 8/255).

    Shape:
        - images: (B, 3, H, W)
        - output: (B, 3, H, W), in [0, 1], at most ``eps`` from ``images`` per pixel
    """
    _check_images(images, eps)
    if eps == 0:
        return images.detach().clone()
    with eval_mode(model):
        grad = input_gradient(model, images, labels)
    return (images.detach() + eps * grad.sign()).clamp(0.0, 1.0)


def pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    alpha: float | None = None,
    steps: int = 10,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient descent in the L-infinity ball of radius ``eps`` (Madry et al. 2018).

    Args:
        model: classifier taking [0, 1] images; run in eval mode, flags restored afterwards.
        images: clean images in [0, 1].
        labels: (B,) true classes.
        eps: radius in [0, 1] pixel units.
        alpha: step size (default ``2.5 * eps / steps``).
        steps: number of steps.
        random_start: start from a uniform random point of the ball (drawn on the CPU from ``generator``).
        generator: CPU generator for the random start (reproducible attacks).

    Shape:
        - images: (B, 3, H, W)
        - output: (B, 3, H, W), in [0, 1], at most ``eps`` from ``images`` per pixel
    """
    _check_images(images, eps)
    _check_pgd(steps, alpha)
    if eps == 0:
        return images.detach().clone()
    alpha = 2.5 * eps / steps if alpha is None else alpha
    clean = images.detach()
    x = clean.clone()
    if random_start:
        noise = torch.rand(clean.shape, generator=generator, dtype=clean.dtype) * 2.0 - 1.0
        x = (x + eps * noise.to(clean.device)).clamp(0.0, 1.0)
    with eval_mode(model):
        for _ in range(steps):
            grad = input_gradient(model, x, labels)
            x = x + alpha * grad.sign()
            x = torch.min(torch.max(x, clean - eps), clean + eps).clamp(0.0, 1.0)
    return x.detach()


@dataclass
class AttackConfig(EvalSettings):
    """Settings of ``ltpa attack``.

    Attributes:
        data: dataset name.
        root: its folder.
        split: split attacked.
        limit: only the first N images.
        data_options: further ``build_dataset`` options.
        method: ``fgsm`` or ``pgd``.
        epsilons: budgets in 1/255 units of [0, 1] pixels.
        steps: PGD steps.
        alpha: PGD step size in 1/255 units (None: 2.5 * eps / steps).
        random_start: PGD random start.
        seed: seed of the PGD random start.
        batch_size: images per batch.
        device: ``cpu``, ``cuda`` or ``auto``.
        which: ``last`` or ``best`` checkpoint of a run folder.
        out: folder for ``attack.csv`` and ``attack.png``.
        progress: progress bars (None: on a terminal).
    """

    method: str = "fgsm"
    epsilons: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0, 8.0, 16.0])
    steps: int = 10
    alpha: float | None = None
    random_start: bool = True
    seed: int = 0
    out: str = "runs/attack"


def attack_sweep(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    method: str = "fgsm",
    epsilons: Sequence[float] = (0, 1, 2, 4, 8, 16),
    steps: int = 10,
    alpha: float | None = None,
    random_start: bool = True,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Accuracy under attack and fooling rate for each budget.

    Args:
        model: classifier taking [0, 1] images.
        images: clean test images, uint8 or float [0, 1] (fed at the model's input side).
        labels: (N,) true classes.
        method: ``"fgsm"`` or ``"pgd"``.
        epsilons: budgets in 1/255 units.
        steps: PGD steps.
        alpha: PGD step in 1/255 units (default ``2.5 * eps / steps``).
        random_start: PGD random start.
        seed: seed of the PGD random start (the same for every budget).
        batch_size: images per batch (the clean predictions use the batches of ``ltpa eval``).
        progress: progress bars (None: on a terminal).

    Returns:
        One row per budget: ``method``, ``eps`` (1/255 units), ``accuracy``, ``fooling_rate`` (NaN when no
        clean image is classified correctly), ``n``.
    """
    if method not in ATTACKS:
        raise LTPAError(f"unknown attack {method!r}; choose one of {', '.join(ATTACKS)}")
    if method == "pgd":
        _check_pgd(steps, alpha, unit=", in 1/255 units")
    labels = labels.long().cpu()
    clean_pred = predict(model, images, batch_size=batch_size, progress=progress, desc="clean").argmax(dim=1)
    correct = clean_pred == labels
    device = model_device(model)
    size = int(getattr(model, "img_size", images.shape[-1]))
    rows = []
    for eps255 in epsilons:
        eps = float(eps255) / 255.0
        if eps == 0:
            adv_pred = clean_pred
        else:
            generator = torch.Generator().manual_seed(seed)
            preds = []
            batches = batch_slices(len(images), batch_size)
            for sl in progress_bar(batches, desc=f"{method} eps={eps255:g}/255", progress=progress):
                x = to_model_input(images[sl], size, device)
                y = labels[sl].to(device)
                if method == "fgsm":
                    adv = fgsm(model, x, y, eps)
                else:
                    step = None if alpha is None else float(alpha) / 255.0
                    adv = pgd(
                        model,
                        x,
                        y,
                        eps,
                        alpha=step,
                        steps=steps,
                        random_start=random_start,
                        generator=generator,
                    )
                with torch.no_grad(), eval_mode(model):
                    preds.append(model(adv).argmax(dim=1).cpu())
            adv_pred = torch.cat(preds)
        n_correct = int(correct.sum())
        flipped = int((correct & (adv_pred != clean_pred)).sum())
        rows.append(
            {
                "method": method,
                "eps": float(eps255),
                "accuracy": int((adv_pred == labels).sum()) / int(labels.numel()),  # as ltpa eval computes it
                "fooling_rate": flipped / n_correct if n_correct else float("nan"),
                "n": int(labels.numel()),
            }
        )
    return rows


def plot_attack(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Writes :func:`attack_figure` as a PNG (atomically)."""
    return save_figure(attack_figure(rows, title=title), path)


def attack_figure(rows: Sequence[dict[str, Any]], *, title: str = "") -> Any:
    """Accuracy under attack and fooling rate against epsilon, one curve (and one colour) per model (the paper's
    robustness figure), a matplotlib ``Figure``. The default title names the attack and the number of images."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    models = list(dict.fromkeys(row["model"] for row in rows))
    colours = model_colours(models)
    for name in models:
        mine = sorted((r for r in rows if r["model"] == name), key=lambda r: r["eps"])
        eps = [r["eps"] for r in mine]
        style = {"marker": "o", "label": name, "color": colours[name]}
        axes[0].plot(eps, [100 * r["accuracy"] for r in mine], **style)
        axes[1].plot(eps, [100 * r["fooling_rate"] for r in mine], **style)
    for ax, label in zip(axes, ("accuracy under attack (%)", "fooling rate (%)")):
        ax.set_xlabel("epsilon (in 1/255 of the pixel range)")
        ax.set_ylabel(label)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0].set_title("accuracy on the attacked images", fontsize=9)
    axes[1].set_title("correctly classified images whose prediction flips", fontsize=9)
    axes[0].legend(fontsize=8, title="model", title_fontsize=8)
    if not title and rows:
        sizes = sorted({int(r["n"]) for r in rows if "n" in r})
        n = f", n={sizes[0]} images" if len(sizes) == 1 else ""
        title = f"{rows[0]['method'].upper()} robustness{n}"
    fig.suptitle(title, fontsize=11)
    return fig


def run_attack(checkpoints: Sequence[str | os.PathLike[str]], config: AttackConfig) -> list[dict[str, Any]]:
    """``ltpa attack``: the sweep of ``config.epsilons`` for each checkpoint.

    Writes ``attack.csv`` (``model,method,eps,accuracy,fooling_rate``; eps in 1/255 units, accuracy and
    fooling rate as fractions) and ``attack.png`` under ``config.out``, and prints a table.
    """
    if config.method not in ATTACKS:
        raise LTPAError(f"unknown attack {config.method!r}; choose one of {', '.join(ATTACKS)}")
    if not config.epsilons:
        raise LTPAError("no epsilon given; pass e.g. --eps 0,1,2,4,8,16")
    if config.method == "pgd":  # before the checkpoints and data are loaded
        _check_pgd(config.steps, config.alpha, unit=", in 1/255 units")
    models = load_checkpoints(checkpoints, which=config.which, device=config.device)
    out = Path(config.out)
    rows: list[dict[str, Any]] = []
    datasets = config.datasets_for(models)
    for model, data in zip(models, datasets):
        sweep = attack_sweep(
            model,
            data.images,
            data.labels,
            method=config.method,
            epsilons=config.epsilons,
            steps=config.steps,
            alpha=config.alpha,
            random_start=config.random_start,
            seed=config.seed,
            batch_size=config.batch_size,
            progress=config.progress,
        )
        rows.extend({"model": model.run_name, **row} for row in sweep)
    write_csv(out / "attack.csv", rows, ATTACK_COLUMNS)
    n = len(datasets[0]) if datasets else 0
    where = f"{config.data} ({config.split} split)"
    plot_attack(
        rows, out / "attack.png", title=f"{config.method.upper()} robustness on {where}, n={n} images"
    )
    logger.info(format_table(rows, ATTACK_COLUMNS, percent=["accuracy", "fooling_rate"]))
    logger.info(f"wrote {out / 'attack.csv'} and {out / 'attack.png'}")
    return rows
