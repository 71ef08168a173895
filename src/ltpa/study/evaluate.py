"""The study's evaluation stage: every trained run measured on the same images of its replicate.

Per run, ``eval/<arm>-r<k>.json`` holds scalars (accuracies, dose-response, map metrics, transfer) and
``eval/<arm>-r<k>.pt`` the per-image correctness under attack, so that fooling rates can be computed over
the images that *both* compared models classify correctly. ``eval/reference-r<k>.json`` holds what does not
depend on a trained model: reference maps and the raw-pixel and random-weight transfer probes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ltpa.study.design import ARMS, DOSE_FRAGMENTS, EPS_GRID, FOOLING_EPS, Design
from ltpa.study.runner import Study, completed_epochs

__all__ = ["ReplicateData", "evaluate_all", "evaluate_run", "load_replicate", "probe_dim"]

log = logging.getLogger("ltpa.study")

TRANSFER_TARGETS: tuple[str, ...] = ("cluttered-digits", "fashion-mnist", "shifted")
PGD_EPS: tuple[float, ...] = (FOOLING_EPS, 8.0)


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, 3, 32, 32)
    labels: torch.Tensor
    masks: torch.Tensor | None = None


@dataclass
class ReplicateData:
    """Every image set of replicate ``k`` (data seed ``design.data_seed(k)``)."""

    val: Split
    test: Split
    dose: dict[int, Split]
    shift: Split
    transfer: dict[str, tuple[Split, Split]]


def _cluttered(kind: str, split: str, root: str | None = None, **options: Any) -> Split:
    from ltpa.data import build_dataset, load_tensors

    dataset = build_dataset(
        f"cluttered-{kind}", root=root if kind == "fashion" else None, split=split, **options
    )
    images, labels, masks = load_tensors(dataset, progress=False)
    return Split(images, labels.long(), masks)


def load_replicate(design: Design, replicate: int) -> ReplicateData:
    """Generates (or reads) the image sets of one replicate; equal for every arm."""
    from ltpa.data import build_dataset, load_tensors

    opts = design.data_options(replicate)
    seed, root = opts["seed"], design.root
    val = _cluttered("fashion", "val", root, **opts)
    test = _cluttered("fashion", "test", root, **opts)
    dose = {
        f: _cluttered("fashion", "test", root, num_test=design.num_dose, num_fragments=f, seed=seed)
        for f in DOSE_FRAGMENTS
    }
    shift_opts = {"object_scale": design.shift_scale, "seed": seed, "root": root}
    shift = _cluttered("fashion", "test", num_test=design.num_shift, **shift_opts)
    n_tr, n_te = design.transfer_train, design.transfer_test
    digits = (
        _cluttered("digits", "train", num_train=n_tr, seed=seed),
        _cluttered("digits", "test", num_test=n_te, seed=seed),
    )
    shifted = (
        _cluttered("fashion", "train", num_train=n_tr, holdout=design.holdout, **shift_opts),
        _cluttered("fashion", "test", num_test=n_te, **shift_opts),
    )
    plain = []
    for split, n in (("train", n_tr), ("test", n_te)):
        dataset = build_dataset("fashion-mnist", root=root, split=split)
        x, y, _ = load_tensors(dataset, 32, limit=n, progress=False)
        plain.append(Split(x, y.long()))
    transfer = {"cluttered-digits": digits, "fashion-mnist": (plain[0], plain[1]), "shifted": shifted}
    return ReplicateData(val, test, dose, shift, transfer)


def probe_dim(design: Design) -> int:
    """The smallest pre-logit feature width over the design's arms: every probe is fitted at this width."""
    from ltpa.models import create_model

    widths = []
    for arm in design.arms:
        spec = ARMS[arm]
        model = create_model(spec.model, num_classes=10, width=design.width, drop_scale=0.0, **spec.kwargs)
        widths.append(int(model.num_features))
    return min(widths)


def _map_sets(model: Any, arm: str, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and every map of the model: attention levels by layer name, VGG-GAP's CAM, VGG's Grad-CAM."""
    from ltpa.study.metrics import gradcam_maps, level_maps, model_maps

    spec = ARMS[arm]
    if spec.has_attention:
        logits, levels = level_maps(model, images)
        maps = {info["name"]: m for info, m in zip(model.attn_info, levels)}
        maps["gradcam"] = gradcam_maps(model, images)  # Grad-CAM at conv13 of the same network
        return logits, maps
    if spec.model == "vgg_gap":
        logits, cam = model_maps(model, images)
        return logits, {"cam": cam}
    from ltpa.evaluate.accuracy import predict

    with torch.no_grad():
        logits = predict(model, images, batch_size=500, progress=False)
    return logits, {"gradcam": gradcam_maps(model, images)}


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(1) == labels).float().mean())


def _predict_split(model: Any, split: Split) -> torch.Tensor:
    from ltpa.evaluate.accuracy import predict

    with torch.no_grad():
        return predict(model, split.images, batch_size=500, progress=False).argmax(1)


def _attack_record(model: Any, test: Split, design: Design, replicate: int) -> dict[str, Any]:
    """Per-image correctness: clean, after FGSM at each eps of the grid, after PGD-10 (fewer images)."""
    from ltpa.study.metrics import attacked_predictions

    x = test.images[: design.num_attack]
    y = test.labels[: design.num_attack]
    record: dict[str, Any] = {"clean": _predict_split(model, Split(x, y)) == y, "fgsm": {}, "pgd10": {}}
    for eps in EPS_GRID:
        record["fgsm"][eps] = attacked_predictions(model, x, y, eps / 255.0, "fgsm", 500, None) == y
    gen = torch.Generator().manual_seed(10_000 + replicate)
    xp, yp = x[: design.num_pgd], y[: design.num_pgd]
    for eps in PGD_EPS:
        record["pgd10"][eps] = attacked_predictions(model, xp, yp, eps / 255.0, "pgd10", 250, gen) == yp
    return record


def _transfer(feature_fn: Any, data: ReplicateData, dim: int, seed: int) -> dict[str, float]:
    from ltpa.study.metrics import linear_probe

    out = {}
    for target, (train, test) in data.transfer.items():
        out[target] = 100.0 * linear_probe(
            feature_fn(train.images), train.labels, feature_fn(test.images), test.labels, dim=dim, seed=seed
        )
    return out


def evaluate_run(study: Study, arm: str, replicate: int, data: ReplicateData, dim: int) -> dict[str, Any]:
    """Measures one trained run; writes and returns its scalars (see the module docstring)."""
    from ltpa.checkpoint import load_model
    from ltpa.study.metrics import area_matched_threshold, features, map_metrics

    model = load_model(study.run_dir(arm, replicate), which="last")
    result: dict[str, Any] = {
        "arm": arm,
        "replicate": replicate,
        "converged": study.converged(arm, replicate),
    }
    val_logits, val_maps = _map_sets(model, arm, data.val.images)
    test_logits, test_maps = _map_sets(model, arm, data.test.images)
    result["val_accuracy"] = _accuracy(val_logits, data.val.labels)
    result["test_accuracy"] = _accuracy(test_logits, data.test.labels)
    result["dose"] = {
        str(f): 100.0 * float((_predict_split(model, s) == s.labels).float().mean())
        for f, s in data.dose.items()
    }
    result["shift_accuracy"] = 100.0 * float(
        (_predict_split(model, data.shift) == data.shift.labels).float().mean()
    )
    result["maps"] = {}
    assert data.val.masks is not None and data.test.masks is not None
    for name, maps in test_maps.items():
        area = area_matched_threshold(_up(val_maps[name]), data.val.masks)
        scores = map_metrics(_up(maps), data.test.masks, area)
        result["maps"][name] = {"area": area, **{k: 100.0 * _nanmean(v) for k, v in scores.items()}}
    result["transfer"] = _transfer(lambda x: features(model, x), data, dim, replicate)
    record = _attack_record(model, data.test, study.design, replicate)
    torch.save(record, study.out / "eval" / f"{arm}-r{replicate}.pt")
    result["fgsm_accuracy"] = {str(e): 100.0 * float(c.float().mean()) for e, c in record["fgsm"].items()}
    result["pgd10_accuracy"] = {str(e): 100.0 * float(c.float().mean()) for e, c in record["pgd10"].items()}
    return result


def _up(maps: torch.Tensor) -> torch.Tensor:
    from ltpa.evaluate import upsample

    return upsample(maps, 32)


def _nanmean(values: torch.Tensor) -> float:
    values = values.double()
    return float(values[~values.isnan()].mean())


def evaluate_reference(study: Study, replicate: int, data: ReplicateData, dim: int) -> dict[str, Any]:
    """Reference maps (uniform, centred Gaussian, image intensity) and reference probes (raw pixels, a
    randomly initialised att2-pc trunk) for one replicate."""
    from ltpa.models import create_model
    from ltpa.study.metrics import (
        REFERENCE_KINDS,
        area_matched_threshold,
        features,
        map_metrics,
        pixel_features,
        reference_maps,
    )

    assert data.val.masks is not None and data.test.masks is not None
    maps = {}
    for kind in REFERENCE_KINDS:
        area = area_matched_threshold(reference_maps(data.val.images, kind, 32), data.val.masks)
        scores = map_metrics(reference_maps(data.test.images, kind, 32), data.test.masks, area)
        maps[kind] = {"area": area, **{k: 100.0 * _nanmean(v) for k, v in scores.items()}}
    d = study.design
    random = create_model(
        "vgg_att2_concat_pc",
        num_classes=10,
        width=d.width,
        drop_scale=0.0,
        init_seed=replicate,
        preprocess="meanstd",
    ).eval()
    random.preprocess.fit(data.transfer["cluttered-digits"][0].images)
    transfer = {
        "pixels": _transfer(pixel_features, data, dim, replicate),
        "random att2-pc": _transfer(lambda x: features(random, x), data, dim, replicate),
    }
    return {"replicate": replicate, "maps": maps, "transfer": transfer}


def evaluate_all(study: Study, arms: Sequence[str] | None = None) -> None:
    """Evaluates every completed run that has no result yet, replicate by replicate."""
    out = study.out / "eval"
    out.mkdir(parents=True, exist_ok=True)
    design = study.design
    if study.threads:
        torch.set_num_threads(study.threads)
    dim = probe_dim(design)
    pending: dict[int, list[str]] = {}
    for arm, k in study.runs(arms):
        done = (out / f"{arm}-r{k}.json").exists()
        if not done and completed_epochs(study.run_dir(arm, k)) >= design.epochs:
            pending.setdefault(k, []).append(arm)
        elif not done:
            log.warning("skip %s replicate %d: training not complete", arm, k)
    for k in range(max(design.primary_replicates, design.descriptive_replicates)):
        if k not in pending and (out / f"reference-r{k}.json").exists():
            continue
        if k not in pending and not any((out / f"{a}-r{k}.json").exists() for a in ARMS):
            continue
        with study.timed("evaluate"):
            data = load_replicate(design, k)
            ref_path = out / f"reference-r{k}.json"
            if not ref_path.exists():
                ref_path.write_text(json.dumps(evaluate_reference(study, k, data, dim), indent=1))
            for arm in pending.get(k, []):
                started = time.perf_counter()
                result = evaluate_run(study, arm, k, data, dim)
                result["seconds"] = round(time.perf_counter() - started, 1)
                (out / f"{arm}-r{k}.json").write_text(json.dumps(result, indent=1))
                log.info(
                    "evaluated %s r%d in %.0f s: test %.2f%%",
                    arm,
                    k,
                    result["seconds"],
                    result["test_accuracy"],
                )
