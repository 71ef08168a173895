"""The evidence study (ltpa.study): design, pilot rules, records, pairing, the report, and end-to-end runs on fake
Fashion-MNIST IDX files."""

from __future__ import annotations

import gzip
import math
import os
import signal
import struct
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ltpa.study import measures
from ltpa.study.design import DESIGN, PRIMARY, SMOKE, Arm, Comparison, Measure, arm
from ltpa.study.results import Records
from ltpa.study.runner import Study, ladder_step, plateau, read_record, write_record

REPO = Path(__file__).resolve().parents[1]


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


# ------------------------------------------------------------------------------------------------ design


def test_every_arm_of_a_replicate_starts_from_the_same_trunk_and_data() -> None:
    reg = DESIGN.regimes[0]
    learned = DESIGN.train_overrides(arm("att2-pc"), 2, reg, lr=0.05, epochs=20)
    uniform = DESIGN.train_overrides(arm("att2-uniform"), 2, reg, lr=0.05, epochs=20)
    assert {k for k in learned if learned[k] != uniform[k]} == {"model_kwargs"}
    assert uniform["model_kwargs"] == {"drop_scale": 0.0, "init_seed": 2, "attention_mode": "uniform"}
    other = DESIGN.train_overrides(arm("att2-pc"), 3, reg, lr=0.05, epochs=20)
    assert other["data_options"]["seed"] != learned["data_options"]["seed"]
    assert learned["eval_split"] == "val"  # training choices never see the test set


def test_the_primaries_name_known_arms_measures_and_regimes_with_six_replicates() -> None:
    names = {a.name for a in DESIGN.arms}
    for c in PRIMARY:
        assert {c.arm_a, c.arm_b} <= names
        measure = next(m for m in DESIGN.measures if m.name == c.measure)
        reg = next(r for r in DESIGN.regimes if r.name == c.regime)
        assert measure.name in reg.measures
        assert c.regime in arm(c.arm_a).regimes and c.regime in arm(c.arm_b).regimes
        assert arm(c.arm_a).role == arm(c.arm_b).role == "primary"
    assert DESIGN.primary_replicates >= 6
    assert {c.family for c in PRIMARY} == {"i", "ii"}
    assert DESIGN.pilot_epochs * 2 <= DESIGN.epochs  # pilots run at least half the schedule


def test_attention_mode_controls_work_for_every_compatibility() -> None:
    import torch

    import ltpa

    for compat in ("pc", "dp", "add"):
        name = f"vgg_att2_concat_{compat}"
        learned = ltpa.create_model(name, width=0.0625, init_seed=0)
        frozen = ltpa.create_model(name, width=0.0625, init_seed=0, attention_mode="frozen")
        uniform = ltpa.create_model(name, width=0.0625, init_seed=0, attention_mode="uniform")
        x = torch.rand(2, 3, 32, 32)
        maps = uniform.forward_attention(x).maps
        assert all(torch.allclose(m, torch.full_like(m, 1.0 / m[0].numel())) for m in maps)
        params = list(frozen.attention.parameters())
        if compat == "dp":  # no attention parameters at matched widths: "frozen" dp is the learned model
            assert params == [] and list(learned.attention.parameters()) == []
        else:
            assert params and not any(p.requires_grad for p in params)
            assert all(p.requires_grad for p in learned.attention.parameters())


def test_unknown_arm_lists_the_valid_names() -> None:
    with pytest.raises(KeyError, match="att2-pc"):
        arm("att2-nope")


# ------------------------------------------------------------------------------------------------ rules


def test_plateau_rule_reads_the_last_fifth_of_the_schedule() -> None:
    rows = [{"train_accuracy": a} for a in (0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.96, 0.97, 0.972, 0.974)]
    holds, change = plateau(rows, 0.5)  # last fifth: epochs 8 -> 10
    assert change == pytest.approx(0.4) and holds
    rows[-1]["train_accuracy"] = 0.98
    holds, change = plateau(rows, 0.5)
    assert change == pytest.approx(1.0) and not holds
    assert plateau(rows[:1], 0.5) == (False, pytest.approx(math.nan, nan_ok=True))


def test_ladder_steps_by_about_three() -> None:
    assert ladder_step(0.01, -1) == pytest.approx(0.003)
    assert ladder_step(0.1, 1) == pytest.approx(0.3)
    assert ladder_step(0.03, 1) == pytest.approx(0.1)


def _pilot_record(root: Path, a: str, lr: float, k: int, val: float, epochs: int = 10) -> None:
    hist = [
        {"epoch": e, "lr": lr, "train_loss": 1.0, "train_accuracy": 0.9, "heldout_accuracy": val}
        for e in range(1, epochs + 1)
    ]
    write_record(
        root / f"pilot/cluttered/{a}/lr{lr:g}-r{k}.json.gz", {"run": {}, "history": hist, "data": {}}
    )


def _pilot_study(tmp_path: Path, grid: tuple[float, ...]) -> Study:
    design = replace(DESIGN, arms=(replace(arm("att2-pc"), lr_grid=grid),), max_grid_extensions=2)
    return Study(tmp_path / "records", tmp_path / "runs", design)


def test_pilot_extends_the_grid_while_the_best_rate_is_at_an_edge(tmp_path: Path) -> None:
    study = _pilot_study(tmp_path, (0.01, 0.03, 0.1))
    a = study.design.arms[0]
    assert study.pilot_state(a)["need"] == [(0.01, 0), (0.03, 0), (0.1, 0)]
    for lr, v in ((0.01, 0.80), (0.03, 0.70), (0.1, 0.60)):
        _pilot_record(study.records, a.name, lr, 0, v)
    state = study.pilot_state(a)
    assert state["need"] == [(0.003, 0)]  # best at the low edge: one rate below
    _pilot_record(study.records, a.name, 0.003, 0, 0.70)
    state = study.pilot_state(a)
    assert state["lr"] == 0.01 and state["interior"] and state["need"] == []


def test_pilot_settles_a_near_tie_on_a_second_replicate(tmp_path: Path) -> None:
    study = _pilot_study(tmp_path, (0.01, 0.03, 0.1))
    a = study.design.arms[0]
    for lr, v in ((0.01, 0.70), (0.03, 0.805), (0.1, 0.80)):  # 0.5 points apart: inside one SE (~0.9)
        _pilot_record(study.records, a.name, lr, 0, v)
    assert study.pilot_state(a)["need"] == [(0.03, 1), (0.1, 1)]
    _pilot_record(study.records, a.name, 0.03, 1, 0.78)
    _pilot_record(study.records, a.name, 0.1, 1, 0.81)
    state = study.pilot_state(a)
    assert state["settled"] and state["lr"] == 0.1 and not state["interior"]


def test_pilot_stops_extending_at_its_limit_and_says_the_optimum_is_not_interior(tmp_path: Path) -> None:
    study = _pilot_study(tmp_path, (0.01, 0.03))
    a = study.design.arms[0]
    for lr, v in ((0.01, 0.80), (0.03, 0.60), (0.003, 0.82), (0.001, 0.84)):
        _pilot_record(study.records, a.name, lr, 0, v)
    state = study.pilot_state(a)
    assert state["grid"] == [0.001, 0.003, 0.01, 0.03] and state["lr"] == 0.001 and not state["interior"]


# ------------------------------------------------------------------------------------------------ records


def test_records_are_byte_identical_for_identical_content(tmp_path: Path) -> None:
    rec = {"b": [1, 2], "a": {"x": 0.5}}
    write_record(tmp_path / "one.json.gz", rec)
    time.sleep(1.1)
    write_record(tmp_path / "two.json.gz", dict(reversed(list(rec.items()))))
    assert (tmp_path / "one.json.gz").read_bytes() == (tmp_path / "two.json.gz").read_bytes()
    assert read_record(tmp_path / "one.json.gz") == rec


def _main_record(root: Path, a: str, k: int, pred: list[int], clean: str, adv: str) -> None:
    data = {"measure_accuracy": {"pred": pred}, "measure_fgsm": {"clean": clean, "eps": {"2": adv}}}
    write_record(root / f"main/cluttered/{a}/r{k}.json.gz", {"run": {"arm": a}, "history": [], "data": data})


def test_fooling_counts_only_images_both_runs_classify_correctly(tmp_path: Path) -> None:
    # image:   0 1 2 3 4
    _main_record(tmp_path, "att2-pc", 0, [0], "11101", "01100")
    _main_record(tmp_path, "att2-frozen-pc", 0, [0], "11011", "10001")
    write_record(
        tmp_path / "data/cluttered-r0.json.gz", {"regime": "cluttered", "replicate": 0, "labels": [0]}
    )
    recs = Records.load(tmp_path, DESIGN)
    comp = Comparison("x", "i", "cluttered", "fgsm", "att2-pc", "att2-frozen-pc", 3.0, "")
    a, b, ks = recs.paired(comp)
    # both correct on 0, 1, 4; pc flips 0 and 4 (2/3), frozen flips 1 (1/3)
    assert ks == [0] and a == [pytest.approx(200 / 3)] and b == [pytest.approx(100 / 3)]


def test_paired_values_keep_common_replicates_and_holm_applies_within_a_family(tmp_path: Path) -> None:
    labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    for k in range(4):
        write_record(
            tmp_path / f"data/cluttered-r{k}.json.gz",
            {"regime": "cluttered", "replicate": k, "labels": labels},
        )
        good = labels[: 8 + (k % 2)] + [0] * (2 - k % 2)
        _main_record(tmp_path, "att2-pc", k, good, "1", "1")
        if k < 3:
            _main_record(tmp_path, "att2-uniform", k, labels[:6] + [0] * 4, "1", "1")
    recs = Records.load(tmp_path, DESIGN)
    comp = Comparison("x", "i", "cluttered", "accuracy", "att2-pc", "att2-uniform", 1.0, "")
    a, b, ks = recs.paired(comp)
    assert ks == [0, 1, 2] and a == [80.0, 90.0, 80.0] and b == [60.0, 60.0, 60.0]
    (res,) = recs.family((comp,))
    assert res.result is not None and res.result.diff == pytest.approx(83.333333 - 60.0, rel=1e-4)
    assert res.p_sign_flip == pytest.approx(0.25)  # 3 positive differences: 2 of 8 sign patterns as extreme


# ------------------------------------------------------------------------------------------------ end to end


def _tiny(root: Path, extra_arm: Arm | None = None, extra_measure: Measure | None = None) -> object:
    arms = (replace(arm("att2-pc"), lr_grid=(0.1,), regimes=("cluttered",)),
            replace(arm("att2-uniform"), lr_grid=(0.1,), regimes=("cluttered",)))  # fmt: skip
    regimes = (DESIGN.regimes[0],)
    ms = DESIGN.measures
    if extra_arm is not None:
        arms = (*arms, extra_arm)
    if extra_measure is not None:
        ms = (*ms, extra_measure)
        regimes = (replace(regimes[0], measures=(*regimes[0].measures, extra_measure.name)),)
    return replace(
        SMOKE,
        root=str(root),
        holdout=100,
        num_train=64,
        num_val=32,
        num_test=32,
        num_attack=16,
        num_pgd=8,
        epochs=2,
        pilot_epochs=1,
        primary_replicates=2,
        double_replicates=1,
        arms=arms,
        regimes=regimes,
        measures=ms,
        primary=tuple(c for c in PRIMARY if c.key == "i-a"),
    )


def _throwaway_measure(ctx: measures.RunContext) -> dict[str, object]:
    return {"n": len(ctx.test.labels)}


@pytest.mark.slow
def test_a_new_arm_and_measure_are_one_entry_each_and_show_in_the_report(
    tmp_path: Path, fake_fashion: Path, single_thread: None
) -> None:
    from ltpa.study.report import write_report

    extra = Arm(
        "att2-throwaway",
        "vgg_att2_concat_dp",
        "a throwaway arm",
        "#123456",
        lr_grid=(0.1,),
        role="descriptive",
    )
    metric = Measure(
        "throwaway",
        "a throwaway measure",
        "images",
        True,
        _throwaway_measure,
        lambda recs, comp, k: (math.nan, math.nan),
        lambda rec, labels: {"throwaway images": float(rec["data"]["_throwaway_measure"]["n"])},
        "Throwaway section",
    )
    design = _tiny(fake_fashion, extra, metric)
    study = Study(tmp_path / "records", tmp_path / "runs", design, jobs=1)
    study.run(("pilot", "main", "descriptive"))
    text = write_report(tmp_path / "records", tmp_path / "docs", design).read_text()
    assert "`att2-throwaway`" in text and "a throwaway arm" in text
    assert "## Throwaway section" in text and "throwaway images" in text and "32.0" in text
    # the report depends on the records alone: rebuilt elsewhere, it is byte-identical
    again = write_report(tmp_path / "records", tmp_path / "docs2", design).read_text()
    assert again == text
    for name in ("pilot.png", "curves.png"):
        one = (tmp_path / "docs/figures" / f"study_smoke_{name}").read_bytes()
        assert one == (tmp_path / "docs2/figures" / f"study_smoke_{name}").read_bytes()


@pytest.mark.slow
def test_smoke_study_survives_a_kill_and_completes_on_the_next_run(
    tmp_path: Path, fake_fashion: Path
) -> None:
    """``python -m ltpa.study --smoke`` killed after its first record, then run again: every run recorded once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = (
        "import sys\nimport ltpa.study.runner as r\n"
        "import tests.test_study as t\nfrom pathlib import Path\n"
        f"r.default_design = lambda smoke: t._tiny(Path({str(fake_fashion)!r}))\n"
        "from ltpa.study.__main__ import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    args = [sys.executable, "-c", code, "pilot", "main", "report", "--smoke", "--jobs", "1",
            "--records", str(tmp_path / "rec"), "--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs")]  # fmt: skip
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list((tmp_path / "rec").rglob("main/**/*.json.gz")):
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.relative_to(tmp_path / "rec") for p in (tmp_path / "rec").rglob("*.json.gz")}
    assert done_before, "the first run should have recorded something before the kill"
    stamps = {p: (tmp_path / "rec" / p).stat().st_mtime_ns for p in done_before}
    subprocess.run(args, cwd=REPO, env=env, check=True, capture_output=True)
    after = {p.relative_to(tmp_path / "rec") for p in (tmp_path / "rec").rglob("*.json.gz")}
    assert done_before <= after
    assert {f"main/cluttered/{a}/r{k}.json.gz" for a in ("att2-pc", "att2-uniform") for k in (0, 1)} <= {
        p.as_posix() for p in after
    }
    assert all((tmp_path / "rec" / p).stat().st_mtime_ns == s for p, s in stamps.items())  # not redone
    assert (tmp_path / "docs" / "results.md").exists()


def test_committed_results_rebuild_byte_for_byte_from_the_committed_records(tmp_path: Path) -> None:
    """docs/results.md and its CSVs are exactly what the report stage makes from docs/results/v3/records."""
    from ltpa.study.report import write_report

    records = REPO / "docs" / "results" / "v3" / "records"
    if not any(records.rglob("*.json.gz")):
        pytest.fail("no committed study records under docs/results/v3/records")
    write_report(records, tmp_path, DESIGN)
    assert (tmp_path / "results.md").read_text() == (REPO / "docs" / "results.md").read_text()
    for csv in sorted((tmp_path / "results" / "v3").glob("*.csv")):
        assert csv.read_text() == (REPO / "docs" / "results" / "v3" / csv.name).read_text(), csv.name


def test_study_command_line_defaults_to_every_stage_and_refuses_unknown_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ltpa.study.__main__ import build_parser, main

    assert build_parser().parse_args([]).stages == []  # `make study`: no stage named means all of them
    assert main(["trian"]) == 2
    assert "unknown stage(s) trian; choose from pilot, main" in capsys.readouterr().err
    assert main(["--jobs", "0"]) == 2


def test_damaged_study_files_are_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    from ltpa.errors import LTPAError
    from ltpa.study.runner import read_history, read_timing

    rec = tmp_path / "main/cluttered/att2-pc/r0.json.gz"
    write_record(rec, {"run": {}, "history": [], "data": {}})
    rec.write_bytes(rec.read_bytes()[:10])  # truncated
    with pytest.raises(LTPAError, match=r"r0\.json\.gz cannot be read.*restore it from git"):
        Records.load(tmp_path, DESIGN)
    (tmp_path / "timing.json").write_text('{"pilot": ')
    with pytest.raises(LTPAError, match=r"timing\.json cannot be read"):
        read_timing(tmp_path / "timing.json")
    run = tmp_path / "run"
    run.mkdir()
    good = '{"epoch": 1, "train_accuracy": 0.5}\n'
    (run / "metrics.jsonl").write_text(good + '{"epoch": 2, "tr')  # a kill mid-line: that epoch is redone
    assert read_history(run) == [{"epoch": 1, "train_accuracy": 0.5}]
    (run / "metrics.jsonl").write_text('{"ep\n' + good)
    with pytest.raises(LTPAError, match="damaged at line 1"):
        read_history(run)


def test_study_refuses_unusable_folders_and_a_report_without_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ltpa.study.__main__ import main

    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["report", "--out", str(a_file / "sub")]) == 1
    assert "cannot create" in capsys.readouterr().err
    assert main(["report", "--out", str(tmp_path / "o"), "--records", str(a_file)]) == 1
    assert "is a file" in capsys.readouterr().err
    args = [
        "report",
        "--out",
        str(tmp_path / "o"),
        "--records",
        str(tmp_path / "none"),
        "--docs",
        str(tmp_path),
    ]
    assert main(args) == 1
    assert "no study records under" in capsys.readouterr().err


def test_study_log_is_never_written_through_a_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ltpa.study.__main__ import main

    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    out = tmp_path / "o"
    out.mkdir()
    (out / "study.log").symlink_to(victim)
    assert main(["report", "--out", str(out), "--records", str(tmp_path / "none")]) == 1
    assert victim.read_text() == "keep"
    assert "study.log" in capsys.readouterr().err
