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
import torch.nn.functional as F

from ltpa.config import TrainConfig
from ltpa.errors import LTPAError
from ltpa.models import LTPAModel
from ltpa.runtime import describe_runtime
from ltpa.utils import atomic_write, normalize_minmax, to_unit_float
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


def _figure_maps(models: dict[str, LTPAModel], images: torch.Tensor, boxes: torch.Tensor, path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    x = to_unit_float(images)
    columns: list[tuple[str, torch.Tensor | None]] = [("image", None)]
    for name, model in models.items():
        device = next(model.parameters()).device
        with torch.no_grad():
            maps = model.forward_attention(x.to(device)).maps
        for level, (info, a) in enumerate(zip(model.attn_info, maps)):
            up = F.interpolate(
                a[:, None].float().cpu(), size=x.shape[-2:], mode="bilinear", align_corners=False
            )[:, 0]
            columns.append((f"{name}\nlevel {level + 1} ({info['name']})", normalize_minmax(up)))
    rows = len(x)
    fig = Figure(figsize=(1.6 * len(columns), 1.6 * rows))
    axes = fig.subplots(rows, len(columns), squeeze=False)
    for r in range(rows):
        img = x[r].permute(1, 2, 0).numpy()
        for c, (title, maps_c) in enumerate(columns):
            ax = axes[r][c]
            ax.imshow(img)
            if maps_c is not None:
                ax.imshow(maps_c[r].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            x0, y0, x1, y1 = (float(v) for v in boxes[r])
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="white", lw=1))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def _figure_curves(histories: dict[str, list[dict[str, Any]]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for name, rows in histories.items():
        epochs = [r["epoch"] for r in rows]
        ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o", label=name)
        ax_acc.plot(epochs, [r["test_accuracy"] for r in rows], marker="o", label=f"{name} (test)")
        ax_acc.plot(epochs, [r["train_accuracy"] for r in rows], ls="--", alpha=0.6, label=f"{name} (train)")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    ax_loss.legend(fontsize=8)
    ax_acc.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


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
    _figure_maps(models, images[pick], boxes[pick], out / "attention_maps.png")
    _figure_curves(histories, out / "training_curves.png")
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
    return summary


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
        "Attention maps per level (bilinearly upsampled, min-max scaled per image; white: the object's box).",
        "",
        "![training curves](training_curves.png)",
        "",
    ]
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text("\n".join(lines)))
