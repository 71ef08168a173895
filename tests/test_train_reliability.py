"""Reliability of training: run folders are never clobbered, locked, resumable at every kill point; non-finite
states are not saved; resume honours or refuses flags; config types and devices give one-line errors."""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_train_config
from torch import nn

import ltpa.checkpoint
import ltpa.cli
import ltpa.train
from ltpa.config import TrainConfig, resolve_config
from ltpa.errors import LTPAError
from ltpa.train import LOCK_FILE, build_model, eval_collapse, fit

SMALL = {"num_train": 64, "num_test": 32}


def small(tmp_path, name="run", **kw):
    """A 2-epoch run of 2 steps each, fixed runtime settings (no timing): well under a second."""
    fixed = {"data_options": dict(SMALL), "amp": "off", "channels_last": "off"}
    return tiny_train_config(tmp_path, name, **{**fixed, **kw})


def small_flags(out, *extra):
    return ["train", "--model", "vgg", "--width", "0.125", "--data-option", "num_train=64", "--data-option",
            "num_test=32", "--epochs", "1", "--batch-size", "32", "--amp", "off", "--channels-last", "off",
            "--quiet", "--out", str(out), *extra]  # fmt: skip


def run_state(run_dir):
    run_dir = Path(run_dir)
    weights = ltpa.checkpoint.load_file(str(run_dir / "last.safetensors"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]
    best = json.loads((run_dir / "best.json").read_text())["epoch"]
    return weights, rows, best


def assert_same(a, b):
    wa, ra, ba = run_state(a)
    wb, rb, bb = run_state(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    assert ra == rb and ba == bb


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return fit(small(tmp_path_factory.mktemp("ref"), name="ref"))


# ------------------------------------------------------------------------------------ 1. the user's data


def test_demo_refuses_run_folder_with_user_files_and_overwrite_keeps_them(tmp_path, capsys):
    from ltpa.demo import _prepare_out

    run = tmp_path / "demo" / "vgg"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("mine\n")
    (run / "notes.txt").write_text("precious\n")
    args = ["demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--num-train", "64", "--num-test", "32"]
    assert ltpa.cli.main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(run) in err and "--overwrite" in err and "notes.txt" in err and len(err.splitlines()) == 1
    assert (run / "notes.txt").read_text() == "precious\n" and (run / "config.yaml").exists()
    _prepare_out(tmp_path / "demo", ["vgg"], overwrite=True)  # what --overwrite does before training
    assert [p.name for p in run.iterdir()] == ["notes.txt"]


def test_train_refuses_folder_that_is_not_a_run_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my own config\n")
    (out / "metrics.csv").write_text("my,own\n")
    (out / "data.bin").write_bytes(b"\0" * 10)
    assert ltpa.cli.main(small_flags(out)) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err and "data.bin" in err
    assert (out / "config.yaml").read_text() == "my own config\n" and (out / "metrics.csv").exists()
    assert not (out / LOCK_FILE).exists()  # nothing was created there
    assert ltpa.cli.main(small_flags(out, "--overwrite")) == 0
    assert (out / "data.bin").read_bytes() == b"\0" * 10 and (out / "last.json").is_file()
    # a finished run is refused without --overwrite, pointing at --resume
    assert ltpa.cli.main(small_flags(out)) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_run_folder_is_locked_while_training_and_released_after(tmp_path):
    import fcntl

    cfg = small(tmp_path, epochs=1)
    out = Path(cfg.out)
    out.mkdir()
    with open(out / LOCK_FILE, "w") as other:  # another training holds the folder
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        other.write("4242\n")
        other.flush()
        with pytest.raises(LTPAError, match=r"in use by another ltpa training \(pid 4242\)") as err:
            fit(cfg)
        assert str(out) in str(err.value) and "\n" not in str(err.value)
        assert list(out.iterdir()) == [out / LOCK_FILE]

    seen = []

    def probe(info):  # during training a second open cannot take the lock
        with open(out / LOCK_FILE) as fh, pytest.raises(BlockingIOError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        seen.append(info["step"])

    fit(cfg, callbacks=[probe])
    assert seen
    with open(out / LOCK_FILE) as fh:  # released when fit returns
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


class Kill(BaseException):
    """Stands for SIGKILL before a file write: nothing after it happens."""


def _count_writes(monkeypatch, kill_at=None):
    real_train, real_ck = ltpa.train.atomic_write, ltpa.checkpoint.atomic_write
    calls = []

    def make(real):
        def write(path, fn):
            calls.append(Path(path).name)
            if kill_at is not None and len(calls) == kill_at:
                raise Kill(Path(path).name)
            return real(path, fn)

        return write

    monkeypatch.setattr(ltpa.train, "atomic_write", make(real_train))
    monkeypatch.setattr(ltpa.checkpoint, "atomic_write", make(real_ck))
    return calls


@pytest.mark.slow
def test_every_kill_point_leaves_a_resumable_or_restartable_folder(tmp_path, ref, monkeypatch):
    with monkeypatch.context() as m:
        writes = _count_writes(m)
        fit(small(tmp_path, name="count"))
    assert writes[:2] == ["config.yaml", "run.json"] and writes[2] == "resume.safetensors"
    for k in range(1, len(writes) + 1):
        cfg = small(tmp_path, name=f"kill{k}")
        with monkeypatch.context() as m:
            _count_writes(m, kill_at=k)
            with pytest.raises(Kill):
                fit(cfg)
        if k % 2 and not (Path(cfg.out) / "resume.safetensors").exists():
            fit(cfg)  # no resume state yet: the same command starts it again
        else:
            fit(TrainConfig(quiet=True), resume=cfg.out)
        assert_same(cfg.out, ref.run_dir)


@pytest.mark.slow
def test_old_order_kill_after_last_before_resume_is_restartable_with_overwrite(tmp_path):
    cfg = small(tmp_path, epochs=1)
    fit(cfg)
    (Path(cfg.out) / "resume.safetensors").unlink()  # as an older ltpa could leave it
    with pytest.raises(LTPAError, match="no resume state; pass --overwrite"):
        fit(cfg)
    with pytest.raises(LTPAError, match="--overwrite"):
        fit(TrainConfig(quiet=True), resume=cfg.out)
    cfg.overwrite = True
    fit(cfg)


# ------------------------------------------------------------------------------------ 2. silent wrong results


def _capture_model(monkeypatch):
    box = {}
    original = ltpa.train.build_model

    def capture(*a, **k):
        box["model"] = original(*a, **k)
        return box["model"]

    monkeypatch.setattr(ltpa.train, "build_model", capture)
    return box


def test_non_finite_state_is_never_saved(tmp_path, monkeypatch):
    box = _capture_model(monkeypatch)

    def blow_up_bn(info):  # what --lr 1e6 does: finite loss, inf BatchNorm statistics
        if info["epoch"] == 2 and info["step"] == 2:
            buffers = dict(box["model"].named_buffers())
            name = next(n for n in buffers if n.endswith("running_var"))
            buffers[name].fill_(float("inf"))

    cfg = small(tmp_path)
    with pytest.raises(LTPAError, match=r"end of epoch 2 .*running_var.*checkpoint \(epoch 1\)"):
        fit(cfg, callbacks=[blow_up_bn])
    assert json.loads((Path(cfg.out) / "last.json").read_text())["epoch"] == 1
    fit(TrainConfig(quiet=True), resume=cfg.out)  # the saved state is the end of epoch 1, still resumable
    assert json.loads((Path(cfg.out) / "last.json").read_text())["epoch"] == 2


def test_lr_1e6_stops_without_saving_and_nan_message_says_no_checkpoint(tmp_path):
    cfg = small(tmp_path, lr=1e6, epochs=1, data_options={"num_train": 192, "num_test": 32})
    with pytest.raises(LTPAError, match="no checkpoint had been saved") as err:
        fit(cfg)
    assert "epoch 1" in str(err.value) and "last good checkpoint" not in str(err.value)
    assert not (Path(cfg.out) / "last.json").exists()


@pytest.mark.slow
def test_resume_extends_epochs_and_refuses_changed_flags(tmp_path, capsys):
    out = tmp_path / "run"
    cosine = ["--lr", "0.003"]
    # a step schedule: more epochs leave the finished steps' rates as they were (the cosine case is below)
    assert ltpa.cli.main(small_flags(out, *cosine, "--lr-schedule", "step")) == 0
    config = (out / "config.yaml").read_text()
    threads = TrainConfig(**__import__("yaml").safe_load(config)).threads
    capsys.readouterr()
    for flags, words in (
        (["--lr", "0.01"], "lr=0.01"),
        (["--seed", "3", "--batch-size", "16"], "seed=3"),
        (["--threads", str(threads + 1)], "threads="),
        (["--amp", "bf16"], "amp='bf16'"),
        (["--model", "vgg_gap"], "model='vgg_gap'"),
        (["--data-option", "num_train=128"], "num_train=128"),
        (["--overwrite"], "--overwrite"),
    ):
        assert ltpa.cli.main(["train", "--resume", str(out), "--quiet", *flags]) == 2, flags
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    assert (out / "config.yaml").read_text() == config
    same = ["--lr", "0.003", "--amp", "auto", "--threads", str(threads), "--model", "vgg"]
    assert ltpa.cli.main(["train", "--resume", str(out), "--quiet", "--epochs", "2", *same]) == 0
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "epochs: 2" in (out / "config.yaml").read_text()
    notes = json.loads((out / "run.json").read_text())["resume_notes"]
    assert notes == ["epochs changed from 1 to 2"]
    assert ltpa.cli.main(["train", "--resume", str(out), "--epochs", "1"]) == 2
    assert "fewer than" in capsys.readouterr().err


def test_resume_with_more_epochs_says_cosine_is_recomputed(tmp_path, capsys):
    cfg = small(tmp_path, epochs=1, optimizer="adamw", lr=3e-3, lr_schedule="cosine", warmup=0.25)
    fit(cfg)
    fit(TrainConfig(quiet=True), resume=cfg.out, changes={"epochs": 2})
    assert "cosine schedule spans all steps, so it is recomputed" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--subset", "--test-subset"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_subsets_must_be_positive(flag, value, capsys):
    assert ltpa.cli.main(["train", "--model", "vgg", flag, value, "--dry-run"]) == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_narrow_non_preset_models_get_less_dropout_presets_stay_exact():
    narrow = TrainConfig(model="vgg_att2_concat_pc", width=0.0625)
    assert build_model(narrow, 10, 32).model_kwargs["drop_scale"] == pytest.approx(0.0625)
    assert build_model(TrainConfig(model="vgg", width=0.125), 10, 32).model_kwargs["drop_scale"] == 0.25
    explicit = TrainConfig(model="vgg", width=0.0625, model_kwargs={"drop_scale": 1.0})
    assert build_model(explicit, 10, 32).model_kwargs["drop_scale"] == 1.0
    assert "drop_scale" not in build_model(TrainConfig(model="vgg", width=0.5), 10, 32).model_kwargs
    preset = resolve_config(preset="vgg_att2_concat_pc-cifar10", overrides={"width": 0.0625})
    assert "drop_scale" not in build_model(preset, 10, 32).model_kwargs


class _TrainOnly(nn.Module):
    """Right in train mode, one constant class in eval mode: a BatchNorm/dropout collapse in miniature."""

    def forward(self, x):
        labels = x[:, 0, 0, 0].long()
        logits = torch.nn.functional.one_hot(labels, 10).float()
        return logits if self.training else torch.zeros_like(logits).index_fill_(1, torch.tensor([0]), 1.0)


def test_train_eval_collapse_is_detected_and_recorded(tmp_path):
    from ltpa.train import _test_metrics

    labels = torch.arange(100) % 10
    images = labels.view(-1, 1, 1, 1).expand(-1, 3, 4, 4).to(torch.uint8)
    model = _TrainOnly()
    eval_acc, _ = _test_metrics(model, images, labels)
    assert eval_acc == pytest.approx(0.1)
    assert eval_collapse(1.0, eval_acc, 10)
    assert not eval_collapse(0.9, 0.85, 10)  # healthy
    assert not eval_collapse(0.12, 0.05, 10)  # not learning yet: no claim
    assert not eval_collapse(0.6, 0.35, 10)  # worse, but not near chance
    run = fit(small(tmp_path, epochs=1))
    row = json.loads((run.run_dir / "metrics.jsonl").read_text())
    assert set(row) >= {"train_eval_accuracy", "eval_collapse"} and row["eval_collapse"] is False


# ------------------------------------------------------------------------------------ 3. one-line errors


@pytest.mark.parametrize(
    ("yaml_text", "words"),
    [
        ("model: vgg\nepochs: two\n", "epochs"),
        ("model: vgg\ndata_options: 5\n", "data_options"),
        ("model: vgg\nlr_milestones: 5\n", "lr_milestones"),
        ("model: vgg\nnesterov: 1\n", "nesterov"),
    ],
)
def test_config_values_of_the_wrong_type(tmp_path, capsys, yaml_text, words):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    assert ltpa.cli.main(["train", "--config", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ltpa train: error: config key " + words) and "expected" in err
    assert len(err.splitlines()) == 1


def test_yaml_float_strings_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: vgg\nlr: 1e-3\n")  # YAML 1.1 reads 1e-3 as a string
    assert resolve_config(path).lr == 0.001


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--img-size", "-8"], "img_size must be at least 1"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--model-kwarg", "num_classes=3"], "num_classes=3 conflicts with the 10 classes"),
        (["--model-kwarg", "width=0.5"], "width=0.5 conflicts with --width"),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path, capsys, flags, words):
    assert ltpa.cli.main(small_flags(tmp_path / "run", *flags)) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_gpu(tmp_path, capsys):
    assert ltpa.cli.main(small_flags(tmp_path / "run", "--device", "cuda")) == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ 4. the command line


def test_no_abbreviated_flags_anywhere(capsys):
    with pytest.raises(SystemExit) as exit_:
        ltpa.cli.main(["train", "--model", "vgg", "--epoch", "2", "--dry-run"])
    assert exit_.value.code == 2 and "--epoch" in capsys.readouterr().err
    parser = ltpa.cli.build_parser()
    assert not parser.allow_abbrev
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert all(not sub.allow_abbrev for sub in subparsers.choices.values())


def test_train_without_what_to_train_is_refused(capsys):
    assert ltpa.cli.main(["train"]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "--preset" in err and "--resume" in err


def _without(flags, flag):
    return [f for f in flags if f != flag]


def test_console_names_the_split_overwrite_and_resumed_thread_count(tmp_path, capsys):
    # --eval-split val: the epoch line and the summary name the split evaluated, not "test"
    val_flags = _without(
        small_flags(tmp_path / "val", "--eval-split", "val", "--data-option", "holdout=64"), "--quiet"
    )
    assert ltpa.cli.main(val_flags) == 0
    captured = capsys.readouterr()
    assert "val acc" in captured.err and "test acc" not in captured.err
    # the input size is said: images are resized to the dataset's size unless told
    assert "images at 32x32 (the dataset's size; --img-size changes it)" in captured.err
    assert "val accuracy" in captured.out
    # metrics.csv (for people) names the split too; metrics.jsonl (for programs) keeps its test_* keys
    header = (tmp_path / "val" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_loss", "val_accuracy"} <= set(header) and not {"test_loss", "test_accuracy"} & set(header)
    first = json.loads((tmp_path / "val" / "metrics.jsonl").read_text().splitlines()[0])
    assert "test_accuracy" in first
    # --overwrite on a finished run says it replaces that run, not that it "never finished an epoch"
    flags = _without(small_flags(tmp_path / "run"), "--quiet")
    assert ltpa.cli.main(flags) == 0
    capsys.readouterr()
    assert ltpa.cli.main([*flags, "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert "--overwrite: replacing the earlier run there (last saved epoch 1)" in err
    assert "never finished" not in err
    # --resume reuses the run's thread count without claiming --threads was given
    assert ltpa.cli.main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2"]) == 0
    err = capsys.readouterr().err
    assert "the count the run started with" in err and "(--threads)" not in err


def test_a_run_that_fails_before_training_leaves_no_empty_folder(tmp_path):
    out = tmp_path / "runs" / "nodata"
    cfg = small(tmp_path, data="cifar10", root=str(tmp_path / "missing"), out=str(out))
    with pytest.raises(LTPAError, match="cifar"):
        fit(cfg)
    assert not (tmp_path / "runs").exists()  # neither the run folder nor the parent it made
    mine = tmp_path / "mine"
    mine.mkdir()  # a folder the user made stays, as empty as it was
    with pytest.raises(LTPAError, match="cifar"):
        fit(small(tmp_path, data="cifar10", root=str(tmp_path / "missing"), out=str(mine)))
    assert mine.is_dir() and [p.name for p in mine.iterdir() if p.name != ".ltpa.lock"] == []
