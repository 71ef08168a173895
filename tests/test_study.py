"""The evidence study's runner, pairing and report (ltpa.study), on fake Fashion-MNIST IDX files."""

from __future__ import annotations

import gzip
import json
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ltpa.study.design import PRIMARY, PRIMARY_ARMS, SMOKE, Comparison, Design
from ltpa.study.results import Results
from ltpa.study.runner import Study


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


@pytest.fixture(scope="module")
def fake_fashion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fashion-MNIST in its real IDX format: each class a bright block at its own place and shape."""
    root = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 400), ("t10k", 120)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        items = np.zeros((n, 28, 28), np.uint8)
        for i, c in enumerate(labels):
            top, height = 2 + 2 * (c % 5), 8 + 2 * (c // 5)
            items[i, top : top + height, 4 : 24 - c] = rng.integers(
                150, 256, (height, 20 - c), dtype=np.uint8
            )
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", items)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def _micro(root: Path) -> Design:
    return replace(
        SMOKE,
        root=str(root),
        holdout=100,
        num_train=96,
        num_val=48,
        num_test=48,
        epochs=3,
        transfer_train=60,
        transfer_test=30,
        descriptive_replicates=0,
        arms=PRIMARY_ARMS,
    )


def _record(clean: list[bool], adv: list[bool]) -> dict:
    from ltpa.study.design import FOOLING_EPS

    return {"clean": torch.tensor(clean), "fgsm": {FOOLING_EPS: torch.tensor(adv)}, "pgd10": {}}


def test_fooling_rate_counts_only_images_both_models_classify_correctly(tmp_path: Path) -> None:
    from ltpa.study.design import FOOLING_EPS

    study = Study(tmp_path, Design())
    (tmp_path / "eval").mkdir()
    # image:        0     1     2      3      4
    a = _record([True, True, True, False, True], [False, True, True, False, False])
    b = _record([True, True, False, True, True], [True, False, False, False, True])
    torch.save(a, tmp_path / "eval" / "att2-pc-r0.pt")
    torch.save(b, tmp_path / "eval" / "att2-uniform-r0.pt")
    res = Results(study)
    rate_a, rate_b, n = res.fooling("att2-pc", "att2-uniform", 0, FOOLING_EPS)
    # both correct on 0, 1, 4; a flips 0 and 4 (2/3), b flips 1 (1/3)
    assert n == 3
    assert rate_a == pytest.approx(200 / 3) and rate_b == pytest.approx(100 / 3)


def test_paired_values_keep_common_finite_replicates_only(tmp_path: Path) -> None:
    study = Study(tmp_path, Design())
    res = Results(study)
    for k, (x, y) in enumerate([(90.0, 88.0), (91.0, float("nan")), (92.0, 89.0)]):
        res.evals[("att2-pc", k)] = {"test_accuracy": x}
        res.evals[("att2-uniform", k)] = {"test_accuracy": y}
    res.evals[("att2-pc", 3)] = {"test_accuracy": 50.0}  # no partner
    comp = Comparison("a", "q", "test_accuracy", "att2-pc", "att2-uniform", 1.0)
    a, b, common = res.paired(comp)
    assert common == [0, 2] and a == [90.0, 92.0] and b == [88.0, 89.0]


def test_replicates_are_paired_and_primaries_train_first(tmp_path: Path) -> None:
    d = Design()
    study = Study(tmp_path, d)
    order = study.runs()
    assert order[:4] == [(a, 0) for a in PRIMARY_ARMS]
    assert len(order) == 4 * d.primary_replicates + 3 * d.descriptive_replicates
    first_descriptive = next(i for i, (a, _) in enumerate(order) if a not in PRIMARY_ARMS)
    assert all(a in PRIMARY_ARMS for a, _ in order[:first_descriptive])
    learned, uniform = d.train_overrides("att2-pc", 2, 0.05), d.train_overrides("att2-uniform", 2, 0.05)
    differing = {k for k in learned if learned[k] != uniform[k]}
    assert differing == {"model_kwargs"}
    assert learned["data_options"]["seed"] != d.train_overrides("att2-pc", 3, 0.05)["data_options"]["seed"]
    assert uniform["model_kwargs"] == {"drop_scale": 0.0, "init_seed": 2, "attention_mode": "uniform"}


def test_convergence_rule_reads_the_last_two_epochs(tmp_path: Path) -> None:
    study = Study(tmp_path, Design())
    run = study.run_dir("vgg", 0)
    run.mkdir(parents=True)
    rows = [{"epoch": e, "test_accuracy": acc} for e, acc in enumerate([0.5, 0.802, 0.804, 0.806], start=1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert study.converged("vgg", 0)
    rows[-1]["test_accuracy"] = 0.808  # 0.6 points above two epochs before
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert not study.converged("vgg", 0)


def test_the_preregistered_primaries_are_five_and_name_known_arms_and_metrics() -> None:
    assert [c.key for c in PRIMARY] == ["a", "b", "c", "d", "e"]
    assert {c.arm_a for c in PRIMARY} == {"att2-pc"}
    assert [c.delta for c in PRIMARY] == [1.0, 5.0, 3.0, 3.0, 2.0]


@pytest.mark.slow
def test_study_end_to_end_on_fake_fashion(tmp_path: Path, fake_fashion: Path, single_thread: None) -> None:
    from ltpa.study.evaluate import evaluate_all
    from ltpa.study.report import write_report

    study = Study(tmp_path / "study", _micro(fake_fashion), threads=1)
    study.train()
    pilot = json.loads((study.out / "pilot.json").read_text())
    assert set(pilot["lr"]) == {"attention", "vgg-gap", "vgg"}
    stamp = (study.run_dir("att2-pc", 1) / "last.safetensors").stat().st_mtime_ns
    study.train()  # complete runs are not trained again
    assert (study.run_dir("att2-pc", 1) / "last.safetensors").stat().st_mtime_ns == stamp

    # arms of one replicate started from equal trunk weights and saw the same validation images
    from ltpa.checkpoint import load_model

    evaluate_all(study)
    first = json.loads((study.out / "eval" / "att2-uniform-r0.json").read_text())
    assert first["maps"]["conv13"]["auc"] == pytest.approx(50.0)  # uniform maps rank nothing
    assert set(first["dose"]) == {"0", "2", "4", "8"} and set(first["transfer"]) == {
        "cluttered-digits",
        "fashion-mnist",
        "shifted",
    }
    uniform = load_model(study.run_dir("att2-uniform", 0))
    assert all(torch.count_nonzero(a.score.weight) == 0 for a in uniform.attention)

    docs = tmp_path / "docs"
    path = write_report(study, docs)
    text = path.read_text()
    assert "## Primary comparisons" in text and "(a) accuracy: learned attention vs uniform pooling" in text
    for name in (
        "comparisons.csv",
        "accuracy.csv",
        "maps.csv",
        "fooling.csv",
        "transfer.csv",
        "training.csv",
    ):
        assert (docs / "results" / name).exists()
    for name in ("study_learning_curves.png", "study_dose_response.png", "study_fgsm.png", "study_maps.png"):
        assert (docs / "figures" / name).stat().st_size > 1000
    timing = json.loads((study.out / "timing.json").read_text())
    assert {"pilot", "train", "evaluate"} <= set(timing)
