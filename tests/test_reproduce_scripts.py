"""scripts/reproduce_cpu.py and its report: the planned commands, the runner, and the statistics and verdicts
that docs/results.md is built from (on a fake run tree written here; no training)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import reproduce_cpu as rc  # noqa: E402
import reproduce_report as rr  # noqa: E402


def test_training_plan_is_every_model_of_every_suite_at_every_seed(tmp_path: Path) -> None:
    tasks = rc.train_tasks(tmp_path, "ltpa", [0, 1, 2], 1.0)
    expected = sum(len(s.models) for s in rc.SUITES.values()) * 3
    assert len(tasks) == expected == 51
    assert len({t.done_file for t in tasks}) == expected  # one folder per run
    att = next(t for t in tasks if t.name == "train cluttered/att2-pc-s1")
    assert att.args[att.args.index("--model") + 1] == "vgg_att2_concat_pc"
    assert att.args[att.args.index("--seed") + 1] == "1"
    assert "num_train=16000" in att.args and "seed=0" in att.args  # same data for every model seed
    matched = next(t for t in tasks if t.name == "train fashion/vgg-matched-s0")
    assert matched.args[matched.args.index("--width") + 1] == str(rc.MATCHED_WIDTH)
    assert not any("cluttered/vgg-matched" in t.name for t in tasks)


def test_scale_shrinks_the_data_of_every_command(tmp_path: Path) -> None:
    train = rc.train_tasks(tmp_path, "ltpa", [0], 0.01)
    fashion = next(t for t in train if t.name == "train fashion/vgg-s0")
    assert fashion.args[fashion.args.index("--subset") + 1] == "200"
    evals = rc.eval_tasks(tmp_path, "ltpa", [0], 0.01)
    assert len(evals) == 7  # fashion: fgsm, pgd, transfer; cluttered: fgsm, transfer, localize, segment
    transfer = next(t for t in evals if t.name == "transfer fashion s0")
    assert transfer.args[transfer.args.index("--limit") + 1] == "300"  # CV needs images in every class
    segment = next(t for t in evals if t.name == "segment cluttered s0")
    assert segment.args[1] == "segment" and str(tmp_path / "cluttered" / "att3-dp-s0") in segment.args


def test_runner_skips_finished_work_and_counts_failures(tmp_path: Path) -> None:
    done = tmp_path / "done.txt"
    make = [sys.executable, "-c", f"open({str(done)!r}, 'w').write('x')"]
    tasks = [
        rc.Task("writes", make, done, 1.0),
        rc.Task("fails", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "never", 1.0),
    ]
    assert rc.run_tasks(tasks, tmp_path, jobs=2) == 1
    assert done.exists()
    log = (tmp_path / "commands.txt").read_text()
    assert "# fails: exit 3" in log and "# writes: exit 0" in log
    assert "$ " in (tmp_path / "logs" / "fails.log").read_text()
    done.write_text("kept")
    assert rc.run_tasks(tasks[:1], tmp_path, jobs=1) == 0
    assert done.read_text() == "kept"  # not run again


def test_stat_welch_and_verdicts() -> None:
    a, b = rr.Stat((0.90, 0.91, 0.92)), rr.Stat((0.80, 0.81, 0.79))
    assert a.mean == pytest.approx(0.91) and a.std == pytest.approx(0.01)
    assert a.fmt() == "91.0 ± 1.0"
    assert rr.welch_p(a, b) < 0.01
    assert rr.compare(a, b) == "better" and rr.compare(b, a) == "worse"
    close = rr.Stat((0.905, 0.93, 0.89))
    assert rr.compare(close, a).endswith("(n.s.)")
    assert rr.compare(rr.Stat((0.9,)), b) == "n/a"
    assert rr.verdict(["better", "better", "worse (n.s.)"]).startswith("held")
    assert rr.verdict(["worse", "worse", "better"]).startswith("contradicted")
    assert rr.verdict(["better", "worse", "better (n.s.)", "worse (n.s.)"]).startswith("not shown")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def fake_runs(out: Path, seeds: list[int]) -> None:
    """A finished reproduction in which attention models are clearly more accurate and localise better, but
    transfer worse; other metrics are equal."""
    for suite in rc.SUITES.values():
        for label in suite.models:
            for seed in seeds:
                run = out / suite.name / f"{label}-s{seed}"
                base = 0.85 if label in rr.ATTENTION else 0.80
                acc = base + 0.002 * seed
                _write_csv(
                    run / "metrics.csv",
                    [{"epoch": 1, "seconds": 100.0, "images_per_s": 150.0, "test_accuracy": acc}],
                )
                info = {"params": 1000, "train_images": 20000, "test_images": 10000}
                (run / "run.json").write_text(json.dumps(info))
                (run / "last.json").write_text("{}")
    for seed in seeds:
        fashion = [f"{lab}-s{seed}" for lab in rc.SUITES["fashion"].models]
        cluttered = [f"{lab}-s{seed}" for lab in rc.SUITES["cluttered"].models]
        for suite, runs in (("fashion", fashion), ("cluttered", cluttered)):
            rows = [
                {"model": m, "method": "fgsm", "eps": e, "accuracy": 0.5 + 0.01 * seed, "fooling_rate": 0.3}
                for m in runs
                for e in (0.0, 1.0, 2.0)
            ]
            _write_csv(out / "eval" / suite / f"fgsm-s{seed}" / "attack.csv", rows)
            targets = rc.TRANSFER_TARGETS[suite]
            rows = [
                {"model": m, "dataset": t, "accuracy": (0.6 if m.startswith("att") else 0.7) + 0.003 * seed}
                for m in runs
                for t in targets
            ]
            _write_csv(out / "eval" / suite / f"transfer-s{seed}" / "transfer.csv", rows)
        loc = []
        seg = []
        for m in cluttered:
            good = m.startswith("att")
            value = (0.6 if good else 0.3) + 0.01 * seed
            levels = ["conv10", "conv13", "mean"] if good or m.startswith("pan") else []
            levels += ["conv13"] if m.startswith("gap") else []
            for level in [*levels, "gradcam"]:
                loc.append(
                    {
                        "model": m,
                        "level": level,
                        "mass_in_box": value,
                        "mass_in_mask": value,
                        "pointing_accuracy": value,
                    }
                )
            kind = "cam" if m.startswith("gap") else "attention"
            for level in levels:
                for rule in ("fixed", "otsu", "oracle"):
                    seg.append(
                        {
                            "model": m,
                            "map": kind,
                            "level": level,
                            "threshold_rule": rule,
                            "class": "mean",
                            "jaccard": value,
                        }
                    )
            for rule in ("fixed", "otsu", "oracle"):
                seg.append(
                    {
                        "model": m,
                        "map": "gradcam",
                        "level": "block13",
                        "threshold_rule": rule,
                        "class": "mean",
                        "jaccard": 0.3,
                    }
                )
        for level in ("uniform", "gaussian"):
            loc.append(
                {
                    "model": "baseline",
                    "level": level,
                    "mass_in_box": 0.15,
                    "mass_in_mask": 0.1,
                    "pointing_accuracy": 0.1,
                }
            )
        _write_csv(out / "eval" / "cluttered" / f"localize-s{seed}" / "localize.csv", loc)
        _write_csv(out / "eval" / "cluttered" / f"segment-s{seed}" / "segment.csv", seg)


def test_report_computes_verdicts_from_the_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        rr,
        "model_cost",
        lambda label: {"params": 1e6, "gflop_forward": 0.1, "gflop_train": 0.3, "gradcam_side": 2.0},
    )
    out, docs = tmp_path / "runs", tmp_path / "docs"
    fake_runs(out, [0, 1, 2])
    page = rr.write_report(out, docs, seeds=[0, 1, 2]).read_text()
    claims = {line.split(" | ")[0].lstrip("| "): line for line in page.splitlines() if line.startswith("| ")}
    assert "held (10 of 10" in claims["Attention models classify better than the baseline VGG (method §4.1)"]
    assert (
        "held"
        in claims["Attention maps find the object better than the baseline's Grad-CAM (method §4.3, §4.5)"]
    )
    assert "contradicted" in claims["Attention features transfer better to unseen datasets (method §4.2)"]
    assert "contradicted" in claims["... transfer: against the same trunk without attention (VGG-GAP)"]
    assert "not shown" in claims["Attention models are more robust to FGSM (and PGD) (method §4.4)"]
    assert "| (VGG-att2)-concat-pc | 85.2 ± 0.2 |" in page
    for name in ("accuracy", "cost", "localize", "segment", "attack", "transfer"):
        assert (docs / "figures" / f"results_{name}.png").stat().st_size > 1000
    rows = list(csv.DictReader((docs / "results" / "training.csv").read_text().splitlines()))
    assert len(rows) == 51


def test_report_without_runs_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="run the train and eval stages first"):
        rr.write_report(tmp_path / "none", tmp_path / "docs", seeds=[0])


def test_describe_device_names_the_cpu() -> None:
    from ltpa.system import describe_device

    text = describe_device("cpu")
    assert text.endswith(" threads") and " cores, " in text


def test_wall_time_comes_from_the_runner_log(tmp_path: Path) -> None:
    log = tmp_path / "reproduce.log"
    log.write_text(
        "51 commands to run, 0 already done, 2 at a time\n[1/51   3.3 min] train a: ok in 198 s\n"
        "[51/51  61.7 min] train b: ok in 30 s\n21 commands to run, 0 already done, 2 at a time\n"
        "[21/21  25.9 min] segment c: ok in 97 s\n0 commands to run, 51 already done, 2 at a time\n"
    )
    assert rr._stage_wall(log) == "training 62 min, evaluation 26 min"
    assert rr._stage_wall(tmp_path / "missing.log") == "not recorded"
