"""``ltpa report``: one self-contained HTML page about trained runs, every figure embedded in it.

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391 (method §3.5:
accuracy; §4.4: robustness to FGSM; §4.5: the maps, bilinearly upsampled and min-max scaled per image).

The page holds, for one run or several compared side by side (one colour per run in every figure):

* learning curves from the run folder's ``metrics.jsonl`` (training and held-out loss and accuracy);
* per-level maps of a few test images with the predicted and the true class (and the object's box where the
  data has masks); Grad-CAM for a model without maps of its own;
* the confusion matrix on the test split (``limit`` images);
* an FGSM sweep on the first ``attack_images`` test images (a cheap look, not ``ltpa attack``'s full run).

Pictures are PNGs inside the page as ``data:`` URIs: the file can be mailed or opened anywhere, offline. It
also says how much the figures can be trusted: they come from one training run (one seed).

    ltpa report runs/att2                         # runs/report/att2.html
    ltpa report runs/att2 runs/vgg --out results  # results/att2+vgg.html
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltpa.errors import LTPAError
from ltpa.evaluate import (
    EvalData,
    EvalSettings,
    attack_figure,
    attack_sweep,
    confusion_figure,
    evaluate_accuracy,
    figure_png,
    load_checkpoints,
    model_colours,
)
from ltpa.models import LTPAModel
from ltpa.utils import atomic_write, safe_filename
from ltpa.utils import log as logger
from ltpa.visualize import (
    attention_grid_figure,
    attention_panels,
    class_names,
    display_box,
    model_label,
    resize_display,
)

__all__ = ["ReportConfig", "curves_figure", "read_history", "run_report", "write_report"]


@dataclass
class ReportConfig(EvalSettings):
    """Settings of ``ltpa report``: those of :class:`ltpa.evaluate.EvalSettings`, and

    Attributes:
        limit: test images scored for accuracy and the confusion matrix (None: all).
        examples: test images whose maps are shown.
        attack_images: test images of the FGSM sweep (0: no attack section).
        epsilons: FGSM budgets in 1/255 units.
        display: side of each picture in the maps figure, in pixels.
        gradcam_backend: ``auto``, ``package`` or ``own`` (for models without maps of their own).
        out: folder of the page, named after the runs (``att2.html``, ``att2+vgg.html``).
        notes: extra sentences shown under the title.
    """

    limit: int | None = 1000
    examples: int = 8
    attack_images: int = 256
    epsilons: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0, 8.0])
    display: int = 96
    gradcam_backend: str = "auto"
    out: str = "runs/report"
    notes: list[str] = field(default_factory=list)


def _run_folder(checkpoint: str | os.PathLike[str]) -> Path:
    path = Path(checkpoint)
    return path if path.is_dir() else path.parent


def read_history(checkpoint: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The per-epoch metrics ``ltpa train`` wrote beside a checkpoint (``metrics.jsonl``, else
    ``metrics.csv``); empty when there are none (a checkpoint saved outside ``ltpa train``)."""
    folder = _run_folder(checkpoint)
    jsonl, table = folder / "metrics.jsonl", folder / "metrics.csv"
    try:
        if jsonl.is_file():
            return [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        if table.is_file():
            with open(table, newline="") as fh:
                # the CSV names its held-out columns after the split (val_accuracy); the rows use test_*
                return [
                    {("test_" + k[4:] if k.startswith("val_") else k): _number(v) for k, v in row.items()}
                    for row in csv.DictReader(fh)
                ]
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as err:
        raise LTPAError(f"cannot read the metrics of {folder} ({err}); the file is damaged") from err
    return []


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


# held-out columns of metrics.jsonl, by the split they were measured on (older runs: test_*)
_HELD_OUT = ("test", "val", "eval")


def curves_figure(histories: dict[str, list[dict[str, Any]]], *, title: str = "") -> Any:
    """Loss and accuracy per epoch, one colour per run; solid lines held-out, dashed lines training.

    Returns:
        A matplotlib ``Figure``, or None when no run has metrics.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    shown = {name: rows for name, rows in histories.items() if rows}
    if not shown:
        return None
    colours = model_colours(list(histories))
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    held_names = set()
    for name, rows in shown.items():
        epochs = [float(r["epoch"]) for r in rows]
        colour = colours[name]
        for ax, metric, scale in ((ax_loss, "loss", 1.0), (ax_acc, "accuracy", 100.0)):
            train = [v for r in rows if isinstance(v := r.get(f"train_{metric}"), int | float)]
            if len(train) == len(rows):
                ax.plot(epochs, [scale * v for v in train], ls="--", marker=".", color=colour, alpha=0.8)
            held = next((s for s in _HELD_OUT if f"{s}_{metric}" in rows[0]), None)
            if held is not None:
                held_names.add(held)
                values = [scale * float(r[f"{held}_{metric}"]) for r in rows]
                ax.plot(epochs, values, ls="-", marker="o", color=colour)
    held_label = "/".join(sorted(held_names)) or "held-out"
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy", ylim=(0, 100))
    handles = [Line2D([], [], color=colours[name], lw=2, label=name) for name in shown]
    handles += [
        Line2D([], [], color="black", ls="-", marker="o", label=f"{held_label} split"),
        Line2D([], [], color="black", ls="--", marker=".", label="training batches"),
    ]
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(handles=handles, fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _maps_figure(model: LTPAModel, data: EvalData, count: int, config: ReportConfig) -> tuple[Any, int]:
    """The maps of the first ``count`` test images with their predicted and true classes; returns the figure
    and how many of those images the model classifies correctly."""
    names = class_names(model, data.classes) or [str(i) for i in range(model.num_classes)]
    has_maps = bool(model.attn_info)
    originals, rows, titles, verdicts, boxes = [], [], [], [], []
    for i in range(min(count, len(data))):
        image, label = data.images[i], int(data.labels[i])
        size = (config.display, config.display)
        panels, pred = attention_panels(
            model, image, size, gradcam=not has_maps, gradcam_backend=config.gradcam_backend, mean=False
        )
        originals.append(resize_display(image, size))
        rows.append(panels)
        mask = data.masks[i] if data.masks is not None else None
        boxes.append(display_box(mask, size))
        true_name = data.classes[label] if label < len(data.classes) else str(label)
        titles.append(
            f"test image {i}\npredicted {names[pred['class']]} ({100 * pred['probability']:.0f}%)\ntrue {true_name}"
        )
        verdicts.append(pred["class"] == label)
    right = sum(verdicts)
    title = (
        f"{model_label(model)} on {data.name} ({data.split} split): "
        f"{right} of {len(verdicts)} classified correctly"
    )
    return attention_grid_figure(
        originals, rows, row_titles=titles, row_ok=verdicts, boxes=boxes, title=title
    ), right


def _img(fig: Any, alt: str) -> str:
    data = base64.b64encode(figure_png(fig)).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _percent(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{100 * value:.1f}%"


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
td { text-align: right; } td:first-child { text-align: left; } img { max-width: 100%; height: auto; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5em 1em; }
.muted { color: #666; font-size: 0.9em; }
"""


def write_report(
    checkpoints: Sequence[str | os.PathLike[str]], path: str | os.PathLike[str], config: ReportConfig
) -> Path:
    """Writes the HTML page about ``checkpoints`` to ``path`` (atomically) and returns ``path``.

    Raises:
        LTPAError: for a missing checkpoint, data the models cannot be scored on, or settings out of range.
    """
    if config.examples < 0 or config.attack_images < 0:
        raise LTPAError("--examples and --attack-images must be 0 or more")
    if config.display < 16:
        raise LTPAError(f"--display must be at least 16 pixels, got {config.display}")
    if any(not math.isfinite(e) or e < 0 for e in config.epsilons):
        raise LTPAError(f"FGSM budgets must be finite numbers >= 0, got {config.epsilons}")
    models = load_checkpoints(checkpoints, which=config.which, device=config.device)
    datasets = config.datasets_for(models)
    names = [m.run_name for m in models]
    histories = {name: read_history(ckpt) for name, ckpt in zip(names, checkpoints)}
    data = datasets[0]
    parts: list[str] = []
    summary_rows: list[list[Any]] = []
    confusion_parts: list[str] = []
    maps_parts: list[str] = []
    attack_rows: list[dict[str, Any]] = []
    for model, model_data in zip(models, datasets):
        logger.info(f"report: scoring {model.run_name} on {len(model_data)} {model_data.name} images")
        result = evaluate_accuracy(
            model,
            model_data.images,
            model_data.labels,
            classes=model_data.classes,
            batch_size=config.batch_size,
            progress=config.progress,
        )
        sidecar = getattr(model, "checkpoint", {}) or {}
        train_config = sidecar.get("config") or {}
        seed = train_config.get("seed", "not recorded")
        epochs = len(histories[model.run_name]) or sidecar.get("epoch", "-")
        params = sum(p.numel() for p in model.parameters())
        summary_rows.append(
            [
                model.run_name,
                model.model_name,
                f"{params:,}",
                epochs,
                seed,
                _percent(result.accuracy),
                result.n,
            ]
        )
        title = f"{model.run_name} on {model_data.name} ({model_data.split} split)"
        confusion_parts.append(
            _img(confusion_figure(result, title=title), f"confusion matrix of {model.run_name}")
        )
        if config.examples:
            figure, _ = _maps_figure(model, model_data, config.examples, config)
            maps_parts.append(_img(figure, f"maps of {model.run_name}"))
        if config.attack_images and config.epsilons:
            n = min(config.attack_images, len(model_data))
            sweep = attack_sweep(
                model,
                model_data.images[:n],
                model_data.labels[:n],
                method="fgsm",
                epsilons=config.epsilons,
                batch_size=config.batch_size,
                progress=config.progress,
            )
            attack_rows.extend({"model": model.run_name, **row} for row in sweep)
    title = "ltpa report: " + ", ".join(names)
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commits = sorted({c for c in (_git_commit(ckpt) for ckpt in checkpoints) if c})
    provenance = f"ltpa {_version()}; training code at git commit {', '.join(commits)}" if commits else ""
    parts.append(f"<h1>{html.escape(title)}</h1>")
    parts.append(
        f'<p class="muted">Generated {generated} from {html.escape(", ".join(str(c) for c in checkpoints))}. '
        f"{html.escape(provenance)}</p>"
    )
    unique_seeds = list(dict.fromkeys(str(row[4]) for row in summary_rows))
    seeds = f"seed {unique_seeds[0]}" if len(unique_seeds) == 1 else f"seeds {', '.join(unique_seeds)}"
    notes = [
        f"Every figure here comes from one training run per model ({seeds}) and one evaluation: it shows "
        "no spread across seeds. Maps in particular can change noticeably between runs that differ only in "
        "the seed or the number of threads; compare several seeds before drawing conclusions "
        "(docs/results.md reports spreads across seeds).",
        *config.notes,
    ]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    parts.append("<h2>Summary</h2>")
    parts.append(_table(["run", "model", "parameters", "epochs", "seed", "test accuracy", "n"], summary_rows))
    parts.append(
        f'<p class="muted">Accuracy on the first {len(data)} images of {html.escape(data.name)} '
        f"({html.escape(data.split)} split), single centre view, BatchNorm in eval mode.</p>"
    )
    parts.append("<h2>Learning curves</h2>")
    trained_on = ((getattr(models[0], "checkpoint", {}) or {}).get("config") or {}).get("data") or data.name
    curves = curves_figure(histories, title=f"training on {trained_on}")
    if curves is None:
        parts.append(
            "<p>No metrics.csv beside the checkpoint(s): these were not saved by <code>ltpa train</code>.</p>"
        )
    else:
        parts.append(_img(curves, "learning curves"))
    if maps_parts:
        parts.append("<h2>Maps with predicted and true classes</h2>")
        parts.append(
            "<p>Each row is one test image; each column one attended level (Grad-CAM for a model without "
            "maps), bilinearly upsampled and scaled per image. Green labels: classified correctly; red: wrong. "
            "White boxes: the object's bounding box, where the data has one.</p>"
        )
        parts += maps_parts
    parts.append("<h2>Confusion matrices</h2>")
    parts += confusion_parts
    if attack_rows:
        n = attack_rows[0]["n"]
        parts.append("<h2>Robustness to FGSM</h2>")
        parts.append(
            f"<p>A quick sweep on the first {n} test images (<code>ltpa attack</code> runs the full one): "
            "accuracy under attack, and the share of correctly classified images whose prediction flips.</p>"
        )
        figure = attack_figure(
            attack_rows, title=f"FGSM robustness on {data.name} ({data.split} split), n={n} images"
        )
        parts.append(_img(figure, "FGSM robustness"))
        parts.append(
            _table(
                ["run", "epsilon (1/255)", "accuracy", "fooling rate"],
                [
                    [r["model"], f"{r['eps']:g}", _percent(r["accuracy"]), _percent(r["fooling_rate"])]
                    for r in attack_rows
                ],
            )
        )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    logger.info(f"wrote {path}")
    return path


def _git_commit(checkpoint: str | os.PathLike[str]) -> str | None:
    run = _run_folder(checkpoint) / "run.json"
    try:
        commit = json.loads(run.read_text()).get("git_commit") if run.is_file() else None
    except (json.JSONDecodeError, OSError, AttributeError):
        return None
    return str(commit)[:12] if commit else None


def _version() -> str:
    from ltpa import __version__

    return __version__


def run_report(checkpoints: Sequence[str | os.PathLike[str]], config: ReportConfig) -> Path:
    """``ltpa report``: the page about ``checkpoints``, written as ``<out>/<run>[+<run>...].html``."""
    if not checkpoints:
        raise LTPAError("no run given; pass one or more run folders")
    stems = []
    for ckpt in checkpoints:
        path = Path(ckpt)
        stems.append(path.name if path.is_dir() else path.parent.name)
    name = "+".join(safe_filename(stem) for stem in stems) or "report"
    return write_report(checkpoints, Path(config.out) / f"{name}.html", config)
