"""The study's figures, drawn with matplotlib's object API (no pyplot, no backend switching)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltpa.study.design import ARMS, DOSE_FRAGMENTS, EPS_GRID
from ltpa.study.results import Results

__all__ = ["dose_response", "fooling_curves", "learning_curves", "map_examples"]

COLOURS = {
    "att2-pc": "tab:red",
    "att2-uniform": "tab:blue",
    "vgg-gap": "tab:green",
    "vgg": "tab:gray",
    "att2-dp": "tab:orange",
    "att2-frozen": "tab:purple",
    "att2-from-g": "tab:brown",
}


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _mean_band(ax: Any, x: Sequence[float], rows: list[list[float]], arm: str) -> None:
    data = np.array(rows, dtype=float)
    mean = data.mean(axis=0)
    ax.plot(x, mean, color=COLOURS[arm], label=f"{ARMS[arm].label} (n={len(rows)})")
    if len(rows) > 1:
        sd = data.std(axis=0, ddof=1)
        ax.fill_between(x, mean - sd, mean + sd, color=COLOURS[arm], alpha=0.15, linewidth=0)


def _per_arm(ax: Any, res: Results, key: str, x: Sequence[float]) -> None:
    """One mean ± std line per arm of the evaluations' ``key`` table, read at each ``x``."""
    for arm in res.arms:
        rows = [[res.evals[(arm, k)][key][str(v)] for v in x] for k in res.replicates(arm)]
        _mean_band(ax, x, rows, arm)


def learning_curves(res: Results, path: Path) -> Path:
    """Training loss and validation accuracy per epoch, mean ± std over replicates, one line per arm."""
    fig = _figure(10, 3.6)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for arm in res.arms:
        hists = [res.histories[(arm, k)] for k in res.replicates(arm) if (arm, k) in res.histories]
        if not hists:
            continue
        epochs = [r["epoch"] for r in hists[0]]
        _mean_band(ax_loss, epochs, [[r["train_loss"] for r in h] for h in hists], arm)
        _mean_band(ax_acc, epochs, [[100 * r["test_accuracy"] for r in h] for h in hists], arm)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy")
    ax_acc.legend(fontsize=7)
    return _save(fig, path)


def dose_response(res: Results, path: Path) -> Path:
    """Test accuracy against the number of clutter fragments (training used 4), mean ± std per arm."""
    fig = _figure(5.5, 3.8)
    ax = fig.subplots()
    x = list(DOSE_FRAGMENTS)
    _per_arm(ax, res, "dose", x)
    ax.axvline(4, color="black", linestyle=":", linewidth=1)
    ax.set(xlabel="clutter fragments per image (training: 4)", ylabel="test accuracy (%)", xticks=x)
    ax.set_title("accuracy under more and less clutter")
    ax.legend(fontsize=7)
    return _save(fig, path)


def fooling_curves(res: Results, path: Path) -> Path:
    """FGSM accuracy against eps per arm (mean ± std)."""
    fig = _figure(5.5, 3.8)
    ax = fig.subplots()
    x = list(EPS_GRID)
    _per_arm(ax, res, "fgsm_accuracy", x)
    ax.set(xlabel="FGSM eps (x 1/255)", ylabel="accuracy under attack (%)", xscale="log", xticks=x)
    ax.set_xticklabels([f"{e:g}" for e in x])
    ax.set_title("FGSM on the first test images")
    ax.legend(fontsize=7)
    return _save(fig, path)


def map_examples(res: Results, path: Path, *, count: int = 6, replicate: int = 0) -> Path:
    """The same test images under every arm's map (replicate ``replicate``), with the object's outline."""
    from ltpa.checkpoint import load_model
    from ltpa.evaluate import normalize_minmax, upsample
    from ltpa.study.evaluate import load_replicate
    from ltpa.study.metrics import gradcam_maps, model_maps

    data = load_replicate(res.study.design, replicate)
    images, masks = data.test.images[:count], data.test.masks
    assert masks is not None
    rows: list[tuple[str, torch.Tensor]] = []
    for arm in res.arms:
        if (arm, replicate) not in res.evals:
            continue
        model = load_model(res.study.run_dir(arm, replicate), which="last")
        if ARMS[arm].has_attention:
            maps = model_maps(model, images, level=-1)[1]
            name = f"{arm} conv13"
        elif ARMS[arm].model == "vgg_gap":
            maps, name = model_maps(model, images)[1], "vgg-gap CAM"
        else:
            maps, name = gradcam_maps(model, images), "vgg Grad-CAM"
        rows.append((name, normalize_minmax(upsample(maps, 32))))
    fig = _figure(1.3 * count, 1.3 * (len(rows) + 1))
    axes = np.atleast_2d(fig.subplots(len(rows) + 1, count))
    for j in range(count):
        img = images[j].permute(1, 2, 0).numpy()
        axes[0, j].imshow(img)
        axes[0, j].contour(masks[j].numpy(), levels=[0.5], colors="white", linewidths=0.6)
        for i, (_, maps) in enumerate(rows, start=1):
            axes[i, j].imshow(img.mean(axis=2), cmap="gray")
            axes[i, j].imshow(maps[j].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[i, j].contour(masks[j].numpy(), levels=[0.5], colors="white", linewidths=0.6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("image", fontsize=7)
    for i, (name, _) in enumerate(rows, start=1):
        axes[i, 0].set_ylabel(name, fontsize=7)
    return _save(fig, path)
