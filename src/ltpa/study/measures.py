"""The study's measures: what each trained run records per image, and how the report turns records into values.

Each measure has three functions, registered together in :mod:`ltpa.study.design` (``MEASURES``):

* ``measure_*(ctx)``: computes the per-image record of one trained run (JSON-able: predictions as lists,
  correct/incorrect as strings of ``0``/``1``, per-image scores rounded to 4 decimals);
* ``paired_*(records, comparison, replicate)``: the two arms' values of a comparison on one replicate;
* ``summary_*(record, data)``: per-run columns for the section's table.

Records hold per-image values so that every number in the report can be recomputed, and distribution-free
tests run, without the run folders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["RunContext", "Split", "bits", "unbits"]


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, 3, 32, 32)
    labels: torch.Tensor  # int64 (N,)
    masks: torch.Tensor | None = None  # bool (N, 32, 32)


@dataclass
class RunContext:
    """What a measure sees: the trained model, its arm and replicate, the replicate's image sets, the design."""

    model: Any
    arm: Any
    replicate: int
    val: Split | None
    test: Split
    design: Any


def bits(flags: torch.Tensor) -> str:
    """A boolean vector as a string of ``0``/``1`` (compact and exact in JSON)."""
    return "".join("1" if bool(f) else "0" for f in flags.flatten().tolist())


def unbits(text: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


def _round(values: torch.Tensor) -> list[float | None]:
    return [None if not math.isfinite(v) else round(v, 4) for v in values.double().tolist()]


def _mean(values: list[float | None]) -> float:
    finite = [v for v in values if v is not None]
    return 100.0 * sum(finite) / len(finite) if finite else math.nan


# ---------------------------------------------------------------------------------------------- accuracy


def measure_accuracy(ctx: RunContext) -> dict[str, Any]:
    from ltpa.evaluate.accuracy import predict

    with torch.no_grad():
        logits = predict(ctx.model, ctx.test.images, batch_size=500, progress=False)
    return {"pred": logits.argmax(1).tolist()}


def accuracy_of(record: dict[str, Any], labels: list[int]) -> float:
    pred = record["data"]["measure_accuracy"]["pred"]
    return 100.0 * sum(int(p == y) for p, y in zip(pred, labels)) / len(labels)


def paired_accuracy(records: Any, comp: Any, replicate: int) -> tuple[float, float]:
    labels = records.labels(comp.regime, replicate)
    ra, rb = records.run(comp.regime, comp.arm_a, replicate), records.run(comp.regime, comp.arm_b, replicate)
    return accuracy_of(ra, labels), accuracy_of(rb, labels)


def summary_accuracy(record: dict[str, Any], labels: list[int]) -> dict[str, float]:
    return {"test accuracy": accuracy_of(record, labels)}


# ---------------------------------------------------------------------------------------------- maps


def _model_maps(model: Any, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every map of the model by the name of its layer, as ``ltpa.evaluate`` names them: attention levels
    (``conv10``, ``conv13``) and VGG-GAP's CAM (``conv13``, the layer it is computed on)."""
    from ltpa.study.metrics import level_maps

    _, levels = level_maps(model, images)
    return {info["name"]: m for info, m in zip(model.attn_info, levels)}


def measure_maps(ctx: RunContext) -> dict[str, Any]:
    """Per map: its resolution, validation mean AP (chooses the best level without the test set), and per test
    image the pixel AP and whether the map's peak falls on the object."""
    from ltpa.evaluate import upsample
    from ltpa.study.metrics import pixel_auc_ap, pointing_hits

    if ctx.val is None or ctx.val.masks is None or ctx.test.masks is None:
        raise ValueError("map measures need validation and test masks")
    val_maps, test_maps = _model_maps(ctx.model, ctx.val.images), _model_maps(ctx.model, ctx.test.images)
    out: dict[str, Any] = {}
    for name, maps in test_maps.items():
        side = int(maps.shape[-1])
        _, val_ap = pixel_auc_ap(upsample(val_maps[name], 32), ctx.val.masks.bool())
        up = upsample(maps, 32)
        _, ap = pixel_auc_ap(up, ctx.test.masks.bool())
        out[name] = {
            "side": side,
            "val_ap": round(_mean(_round(val_ap)), 4),
            "ap": _round(ap),
            "pointing": _round(
                pointing_hits(up, ctx.test.masks.bool())
            ),  # share of tied maxima on the object
        }
    return out


def best_map(record: dict[str, Any]) -> str:
    """The map with the highest validation AP (ties: the first)."""
    maps = record["data"]["measure_maps"]
    return max(maps, key=lambda name: (maps[name]["val_ap"], -list(maps).index(name)))


def _map_value(record: dict[str, Any], key: str, which: str = "best") -> float:
    maps = record["data"]["measure_maps"]
    entry = maps[best_map(record) if which == "best" else list(maps)[-1]]
    return _mean(entry[key])


def paired_map_ap(records: Any, comp: Any, replicate: int) -> tuple[float, float]:
    ra, rb = records.run(comp.regime, comp.arm_a, replicate), records.run(comp.regime, comp.arm_b, replicate)
    return _map_value(ra, "ap"), _map_value(rb, "ap")


def paired_map_pointing(records: Any, comp: Any, replicate: int) -> tuple[float, float]:
    ra, rb = records.run(comp.regime, comp.arm_a, replicate), records.run(comp.regime, comp.arm_b, replicate)
    return _map_value(ra, "pointing"), _map_value(rb, "pointing")


def paired_map_ap_deepest(records: Any, comp: Any, replicate: int) -> tuple[float, float]:
    """Pixel AP of each arm's deepest map (the attention models' conv13 and VGG-GAP's CAM are both 8x8 at 32
    px input): the comparison at equal resolution."""
    ra, rb = records.run(comp.regime, comp.arm_a, replicate), records.run(comp.regime, comp.arm_b, replicate)
    return _map_value(ra, "ap", "deepest"), _map_value(rb, "ap", "deepest")


def summary_map_ap(record: dict[str, Any], labels: list[int]) -> dict[str, float]:
    maps = record["data"]["measure_maps"]
    return {
        f"AP {name} ({maps[name]['side']}x{maps[name]['side']})": _mean(maps[name]["ap"]) for name in maps
    }


def summary_map_pointing(record: dict[str, Any], labels: list[int]) -> dict[str, float]:
    maps = record["data"]["measure_maps"]
    return {f"pointing {name}": 100.0 * float(unbits(maps[name]["pointing"]).float().mean()) for name in maps}


# ---------------------------------------------------------------------------------------------- attacks


def measure_fgsm(ctx: RunContext) -> dict[str, Any]:
    """Correct/incorrect per image, clean and after FGSM at each eps of the design's grid (first ``num_attack``
    test images)."""
    from ltpa.study.metrics import attacked_predictions

    n = min(ctx.design.num_attack, len(ctx.test.labels))
    x, y = ctx.test.images[:n], ctx.test.labels[:n]
    from ltpa.evaluate.accuracy import predict

    with torch.no_grad():  # clean predictions need no gradient (an FGSM step of size 0 took one)
        clean = predict(ctx.model, x, batch_size=500, progress=False).argmax(1) == y
    out: dict[str, Any] = {"clean": bits(clean), "eps": {}}
    for eps in ctx.design.eps_grid:
        out["eps"][f"{eps:g}"] = bits(
            attacked_predictions(ctx.model, x, y, eps / 255.0, "fgsm", 500, None) == y
        )
    return out


def measure_pgd(ctx: RunContext) -> dict[str, Any]:
    """Correct/incorrect per image after PGD-10 (random start seeded by the replicate) at the fooling eps."""
    from ltpa.study.metrics import attacked_predictions

    n = min(ctx.design.num_pgd, len(ctx.test.labels))
    x, y = ctx.test.images[:n], ctx.test.labels[:n]
    gen = torch.Generator().manual_seed(10_000 + ctx.replicate)
    eps = ctx.design.fooling_eps
    return {
        "eps": {f"{eps:g}": bits(attacked_predictions(ctx.model, x, y, eps / 255.0, "pgd10", 250, gen) == y)}
    }


def fooling(ra: dict[str, Any], rb: dict[str, Any], eps: float) -> tuple[float, float, int]:
    """Fooling rates (%) of both runs over the images both classify correctly when clean."""
    fa, fb = ra["data"]["measure_fgsm"], rb["data"]["measure_fgsm"]
    ca, cb = unbits(fa["clean"]), unbits(fb["clean"])
    n = min(len(ca), len(cb))
    both = ca[:n] & cb[:n]
    count = int(both.sum())
    if count == 0:
        return math.nan, math.nan, 0
    key = f"{eps:g}"
    rate_a = 100.0 * float((~unbits(fa["eps"][key])[:n][both]).float().mean())
    rate_b = 100.0 * float((~unbits(fb["eps"][key])[:n][both]).float().mean())
    return rate_a, rate_b, count


def paired_fooling(records: Any, comp: Any, replicate: int) -> tuple[float, float]:
    ra, rb = records.run(comp.regime, comp.arm_a, replicate), records.run(comp.regime, comp.arm_b, replicate)
    a, b, _ = fooling(ra, rb, records.design.fooling_eps)
    return a, b


def _pgd_accuracy(record: dict[str, Any]) -> float:
    (flags,) = record["data"]["measure_pgd"]["eps"].values()
    return 100.0 * float(unbits(flags).float().mean())


def paired_pgd(records: Any, comp: Any, replicate: int) -> tuple[float, float]:
    ra, rb = records.run(comp.regime, comp.arm_a, replicate), records.run(comp.regime, comp.arm_b, replicate)
    return _pgd_accuracy(ra), _pgd_accuracy(rb)


def summary_fgsm(record: dict[str, Any], labels: list[int]) -> dict[str, float]:
    f = record["data"]["measure_fgsm"]
    clean = unbits(f["clean"])
    out = {}
    for key, flags in f["eps"].items():
        out[f"FGSM {key}/255 accuracy"] = 100.0 * float(unbits(flags).float().mean())
    out["clean accuracy (attack images)"] = 100.0 * float(clean.float().mean())
    return out


def summary_pgd(record: dict[str, Any], labels: list[int]) -> dict[str, float]:
    return {"PGD-10 accuracy": _pgd_accuracy(record)}
