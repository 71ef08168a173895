"""``ltpa demo``: the project's main job, on the embedded cluttered-digits data, on a laptop CPU in minutes.

It trains the baseline VGG and an attention VGG of the paper's layout ("Learn To Pay Attention",
https://arxiv.org/abs/1804.02391) at a narrow width, evaluates both on the test split (accuracy, and how much
of each attention map falls inside the object's bounding box), and writes ``report.md``, figures and
``summary.json`` to the output folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ltpa.config import TrainConfig
from ltpa.errors import LTPAError
from ltpa.models import LTPAModel
from ltpa.runtime import describe_runtime
from ltpa.utils import atomic_write, to_unit_float
from ltpa.utils import log as logger

__all__ = ["DemoConfig", "run_demo"]


@dataclass
class DemoConfig:
    """What the demo trains. Defaults are chosen to finish in under 5 minutes on a 2-core CPU."""

    out: str = "runs/demo"
    data: str = "cluttered-digits"
    baseline: str = "vgg"
    attention: str = "vgg_att2_concat_pc"
    width: float = 0.125
    epochs: int = 6
    batch_size: int = 64
    lr: float = 3e-3
    num_train: int = 10000
    num_test: int = 1000
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # see TrainConfig: bf16 autocast where the CPU computes bf16 natively
    channels_last: str = "auto"
    threads: int | None = None  # None: the idle cores
    quiet: bool = False
    drop_scale: float = 0.0  # dropout off: a few epochs on a narrow net underfit rather than overfit
    overwrite: bool = False  # train into run folders that hold other files too (only ltpa's are replaced)
    data_options: dict[str, Any] = field(default_factory=dict)

    def train_config(self, model: str) -> TrainConfig:
        """The training config of one of the demo's models."""
        return TrainConfig(
            model=model,
            data=self.data,
            data_options={
                "num_train": self.num_train,
                "num_test": self.num_test,
                "seed": self.seed,
                **self.data_options,
            },
            model_kwargs={"drop_scale": self.drop_scale},
            width=self.width,
            epochs=self.epochs,
            batch_size=self.batch_size,
            optimizer="adamw",
            lr=self.lr,
            lr_schedule="cosine",
            warmup=0.25,
            lr_decay=0.0,
            lr_milestones=[],
            lr_factors=[],
            augment="none",
            out=str(Path(self.out) / model),
            seed=self.seed,
            device=self.device,
            amp=self.amp,
            channels_last=self.channels_last,
            threads=self.threads,
            quiet=self.quiet,
            overwrite=self.overwrite,
        )


@torch.no_grad()
def _evaluate(
    model: LTPAModel, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor
) -> dict[str, Any]:
    """Test accuracy, and per level the mean share of the attention map inside the object's box, scored as
    ``ltpa localize`` does (bilinear upsampling to the image, the map read as a distribution)."""
    from ltpa.evaluate import localization_scores, upsample

    model.eval()
    device = next(model.parameters()).device
    side = images.shape[-1]
    correct, mass = 0, torch.zeros(len(model.attn_info), dtype=torch.float64)
    for start in range(0, len(images), 250):
        x = to_unit_float(images[start : start + 250].to(device))
        out = model.forward_attention(x)
        correct += int((out.logits.argmax(1).cpu() == labels[start : start + 250]).sum())
        for level, a in enumerate(out.maps):
            scores = localization_scores(upsample(a.cpu(), side), masks[start : start + 250])
            mass[level] += scores["mass_in_box"].double().sum()
    n = len(images)
    return {"test_accuracy": correct / n, "attention_mass_in_box": [round(float(m) / n, 4) for m in mass]}


def _figure_maps(
    models: dict[str, LTPAModel],
    images: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    indices: torch.Tensor,
    classes: list[str],
    path: Path,
) -> None:
    """Per-level maps of the models that have them, on the test images ``indices``, each row labelled with the
    true class and every model's prediction, the object's box drawn, under one colour bar."""
    from ltpa.evaluate import save_figure
    from ltpa.visualize import attention_grid_figure, attention_panels, display_box, resize_display

    size = (96, 96)
    originals, rows, titles, verdicts, boxes = [], [], [], [], []
    for i in indices.tolist():
        image, label = images[i], int(labels[i])
        row: list[tuple[str, torch.Tensor]] = []
        lines = [f"test image {i}", f"true {classes[label]}"]
        right = []
        for name, model in models.items():
            panels, pred = attention_panels(model, image, size, gradcam=False, mean=False)
            row += [(f"{name}\n{level}", heat) for level, heat in panels]
            lines.append(f"{name}: {classes[pred['class']]} ({100 * pred['probability']:.0f}%)")
            if panels:
                right.append(pred["class"] == label)
        originals.append(resize_display(image, size))
        rows.append(row)
        titles.append("\n".join(lines))
        verdicts.append(all(right) if right else None)
        boxes.append(display_box(masks[i], size))
    mapped = [name for name, model in models.items() if model.attn_info]
    correct = sum(1 for v in verdicts if v)
    title = (
        f"maps of {', '.join(mapped)} on {len(indices)} cluttered-digits test images "
        f"({correct} classified correctly; one seed)"
    )
    figure = attention_grid_figure(
        originals, rows, row_titles=titles, row_ok=verdicts, boxes=boxes, title=title
    )
    save_figure(figure, path, dpi=110)


def _figure_curves(histories: dict[str, list[dict[str, Any]]], data: str, path: Path) -> None:
    """Loss and accuracy per epoch, one colour per model in both panels."""
    from ltpa.evaluate import save_figure
    from ltpa.report import curves_figure

    figure = curves_figure(histories, title=f"training on {data} (one seed)")
    if figure is not None:
        save_figure(figure, path, dpi=110)


# The settings that make a training the demo's: a run folder whose config.yaml has others is not redone.
_DEMO_SETTINGS: tuple[str, ...] = (
    "model", "data", "data_options", "model_kwargs", "width", "batch_size", "optimizer", "lr", "lr_schedule",
    "warmup", "augment", "seed",
)  # fmt: skip


def _made_by_demo(out: Path, run: Path, cfg: DemoConfig | None) -> bool:
    """Whether the training in ``run`` is one of the demo's: ``out/summary.json`` (written by a finished
    demo) lists it, or its settings are the demo's (an interrupted demo started it)."""
    import yaml

    try:
        summary = json.loads((out / "summary.json").read_text())
        if isinstance(summary, dict) and run.name in (summary.get("models") or {}):
            return True
    except (OSError, UnicodeDecodeError, ValueError):
        pass  # no finished demo there
    if cfg is None:
        return False
    try:
        saved = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    wanted = json.loads(json.dumps(cfg.train_config(run.name).to_dict()))
    return isinstance(saved, dict) and all(saved.get(k) == wanted[k] for k in _DEMO_SETTINGS)


def _prepare_out(out: Path, names: list[str], overwrite: bool = False, cfg: DemoConfig | None = None) -> None:
    """Clears the run folders an earlier demo wrote under ``out`` (the demo is reproducible, so they are
    redone). A run folder holding any file ltpa does not write, or a training that is not the demo's (an
    ``ltpa train`` run named like a demo model), is refused unless ``overwrite``; even then only ltpa's own
    files are deleted."""
    from ltpa.train import clear_run, foreign_files

    if out.exists() and not out.is_dir():
        raise LTPAError(f"{out} exists and is not a folder; choose another --out")
    runs = [out / name for name in names]
    for run in runs:
        if run.exists() and not run.is_dir():
            raise LTPAError(f"{run} exists and is not a folder; choose another --out")
        foreign = foreign_files(run)
        if foreign and not overwrite:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise LTPAError(
                f"{run} holds files the demo did not write ({shown}); choose another --out or pass "
                "--overwrite (only the demo's own files are replaced)"
            )
        if (run / "config.yaml").is_file() and not overwrite and not _made_by_demo(out, run, cfg):
            raise LTPAError(
                f"{run} holds a training that is not the demo's (its config.yaml has other settings); choose "
                "another --out, or pass --overwrite to replace it"
            )
    for run in runs:  # nothing is deleted before every folder was checked
        clear_run(run)


def run_demo(cfg: DemoConfig | None = None) -> dict[str, Any]:
    """Trains and evaluates the demo's two models and writes the report; returns ``summary.json``'s content."""
    from ltpa.data import boxes_from_masks, build_dataset, load_tensors
    from ltpa.train import fit

    cfg = cfg or DemoConfig()
    start = time.perf_counter()
    out = Path(cfg.out)
    names = [cfg.baseline, cfg.attention]
    _prepare_out(out, names, cfg.overwrite, cfg)
    out.mkdir(parents=True, exist_ok=True)

    results: dict[str, Any] = {}
    models: dict[str, LTPAModel] = {}
    histories: dict[str, list[dict[str, Any]]] = {}
    train_seconds: dict[str, float] = {}
    runtimes: dict[str, dict[str, Any]] = {}
    for name in names:
        if not cfg.quiet:
            logger.info("[demo] training %s (width %s) on %s", name, cfg.width, cfg.data)
        t0 = time.perf_counter()
        result = fit(cfg.train_config(name))
        train_seconds[name] = time.perf_counter() - t0
        runtimes[name] = json.loads((result.run_dir / "run.json").read_text())["runtime"]
        models[name] = result.model
        histories[name] = result.history

    test = build_dataset(cfg.data, split="test", **cfg.train_config(cfg.attention).data_options)
    images, labels, masks = load_tensors(test, progress=False)
    if masks is None:
        raise LTPAError(f"the demo needs a dataset with object masks; {cfg.data} has none")
    boxes = boxes_from_masks(masks)
    side = images.shape[-1]
    box_area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).float() / (side * side)
    for name, model in models.items():
        res = _evaluate(model, images, labels, masks)
        res["params"] = sum(p.numel() for p in model.parameters())
        res["train_seconds"] = round(train_seconds[name], 1)
        res["runtime"] = runtimes[name]
        results[name] = res

    pick = torch.arange(0, len(images), max(1, len(images) // 8))[:8]
    _figure_maps(models, images, labels, masks, pick, list(test.classes), out / "attention_maps.png")
    _figure_curves(histories, cfg.data, out / "training_curves.png")
    summary = {
        "wall_seconds": round(time.perf_counter() - start, 1),
        "box_area_fraction": round(float(box_area.mean()), 4),
        "models": {
            name: {k: results[name][k] for k in ("test_accuracy", "attention_mass_in_box", "runtime")}
            for name in names
        },
    }
    text = json.dumps(summary, indent=2) + "\n"
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(text))
    _write_report(cfg, out, summary, results)
    _write_html_report(cfg, out, names)
    return summary


ONE_SEED_NOTE = (
    "These figures and numbers come from one seed (one training run per model): they show no spread across "
    "seeds. Attention maps in particular are not stable: a rerun that differs only in the seed, or even only "
    "in the number of threads, can move them noticeably (and with them the mass in the box). For spreads "
    "across seeds see the paired study (docs/results.md)."
)


def _write_html_report(cfg: DemoConfig, out: Path, names: list[str]) -> None:
    """``report.html``: the two runs side by side (``ltpa report``), with the demo's settings."""
    from ltpa.report import ReportConfig, write_report

    config = ReportConfig(
        data=cfg.data,
        split="test",
        limit=None,
        data_options=cfg.train_config(cfg.attention).data_options,
        device=cfg.device,
        progress=False,
        notes=[f"ltpa demo: {cfg.epochs} epochs at width {cfg.width}, seed {cfg.seed}; a short CPU budget."],
    )
    write_report([out / name for name in names], out / "report.html", config)


def _write_report(cfg: DemoConfig, out: Path, summary: dict[str, Any], results: dict[str, Any]) -> None:
    frac = summary["box_area_fraction"]
    lines = [
        "# ltpa demo: attention on cluttered digits",
        "",
        f"Data: `{cfg.data}` ({cfg.num_train} training and {cfg.num_test} test images, 32x32, seed {cfg.seed}): "
        "one handwritten digit per image among fragments of other digits and noise.",
        f"Models at width {cfg.width}, dropout off, {cfg.epochs} epochs of AdamW (batch {cfg.batch_size}, peak lr "
        f"{cfg.lr}, warm-up then cosine), one seed: a short CPU budget, not the paper's recipe (see `ltpa train "
        f"--list-presets`). Wall time {summary['wall_seconds']} s.",
        "",
        "| model | parameters | test accuracy | attention mass in box, per level | train time (s) | runtime |",
        "|---|---:|---:|---|---:|---|",
    ]
    for name, res in results.items():
        mass = ", ".join(f"{m:.3f} ({m / frac:.1f}x)" for m in res["attention_mass_in_box"]) or "-"
        lines.append(
            f"| `{name}` | {res['params']:,} | {res['test_accuracy']:.4f} | {mass} | {res['train_seconds']} | "
            f"{describe_runtime(res['runtime']['threads'], res['runtime']['amp'], res['runtime']['channels_last'])} |"
        )
    lines += [
        "",
        f"A uniform map puts {frac:.3f} of its mass in the box (the box's mean share of the canvas); "
        "the factor in brackets is relative to that.",
        "",
        "![attention maps](attention_maps.png)",
        "",
        "Attention maps per level (bilinearly upsampled, min-max scaled per image; white: the object's box); "
        "each row gives the true class and every model's prediction (green: the attention model is right).",
        "",
        "![training curves](training_curves.png)",
        "",
        f"**One seed.** {ONE_SEED_NOTE}",
        "",
        "The same results as one page, figures included: `report.html` (open it in a browser).",
        "",
    ]
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text("\n".join(lines)))
