"""Training configs: defaults that train at any length, presets that stay exact (method §3.1), and every value
checked before anything is built."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import pytest
from conftest import CLUTTERED_OPTIONS

import ltpa.cli
from ltpa.cli import main
from ltpa.config import DEFAULT_LR, TrainConfig, list_presets, load_yaml, preset_overrides, resolve_config
from ltpa.errors import LTPAError
from ltpa.train import fit, lr_at

# Every field of a recipe: a paper preset that left one of them to TrainConfig's defaults would change
# whenever the defaults do.
RECIPE_FIELDS = (
    "optimizer", "lr", "epochs", "batch_size", "momentum", "dampening", "nesterov", "weight_decay", "lr_decay",
    "lr_milestones", "lr_factors", "lr_schedule", "warmup", "augment", "reset_momentum", "label_smoothing",
)  # fmt: skip


def test_paper_presets_pin_their_whole_recipe():
    paper = [name for name in list_presets() if name != "demo"]
    assert len(paper) > 80
    for name in paper:
        over = preset_overrides(name)
        missing = [key for key in RECIPE_FIELDS if key not in over]
        assert not missing, (name, missing)
        assert over["optimizer"] == "sgd" and over["lr_schedule"] == "step" and over["warmup"] == 0.0
    cfg = resolve_config(preset="vgg_att2_concat_pc-cifar10")
    assert (cfg.optimizer, cfg.lr, cfg.dampening, cfg.lr_decay, cfg.epochs) == ("sgd", 1.0, 0.9, 1e-7, 300)
    assert cfg.lr_milestones == list(range(25, 301, 25)) and cfg.augment == "flip-half"


def test_defaults_are_a_short_warmup_cosine_adamw_recipe():
    cfg = TrainConfig()
    assert (cfg.optimizer, cfg.lr, cfg.lr_schedule, cfg.epochs) == (
        "adamw",
        DEFAULT_LR["adamw"],
        "cosine",
        10,
    )
    assert cfg.epochs <= 20 and 0 < cfg.warmup < 0.5 and cfg.lr_decay == 0
    # the learning rate suits the optimiser: SGD gets its own unless one is given
    assert (
        TrainConfig(optimizer="sgd").lr
        == DEFAULT_LR["sgd"]
        == resolve_config(overrides={"optimizer": "sgd"}).lr
    )
    assert TrainConfig(optimizer="sgd", lr=0.3).lr == 0.3
    # warm-up, then down to 0 at the run's last step, at any length
    for epochs in (1, 3, 300):
        total = 40 * epochs
        run = dataclasses.replace(cfg, epochs=epochs)
        rates = [lr_at(run, 1, t, total) for t in range(total)]
        assert rates[0] < 0.2 * cfg.lr and max(rates) == pytest.approx(cfg.lr, rel=0.01)
        assert rates[-1] < 0.01 * cfg.lr and lr_at(run, epochs, total, total) == 0.0


def test_demo_is_a_named_preset():
    from ltpa.demo import DemoConfig

    cfg = resolve_config(preset="demo")
    demo = DemoConfig().train_config(DemoConfig().attention)
    for key in (*RECIPE_FIELDS, "model", "width", "model_kwargs", "data", "data_options"):
        assert getattr(cfg, key) == getattr(demo, key), key
    assert cfg.preset == "demo"


def test_train_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        ltpa.cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--epochs EPOCHS epochs to train (default 10" in text
    assert "default 3e-3 with adamw, 0.1 with sgd" in text
    assert "cosine (default)" in text and "adamw (default)" in text and "--preset demo" in text


@pytest.mark.slow
@pytest.mark.usefixtures("single_thread")
def test_defaults_train_a_narrow_attention_model_in_three_epochs(tmp_path):
    # Under the old defaults, the paper's recipe (SGD at lr 1 with Torch's dampening, step schedule, batch 128,
    # flip-half), this run stayed at chance (test accuracy 0.10, 0.14, 0.125); the defaults reached 0.545.
    options = {**CLUTTERED_OPTIONS, "num_train": 3072, "num_test": 200}
    cfg = resolve_config(
        overrides={
            "model": "vgg_att2_concat_pc",
            "data": "cluttered-digits",
            "data_options": options,
            "width": 0.125,
            "img_size": 16,
            "epochs": 3,
            "out": str(tmp_path / "run"),
            "quiet": True,
        }
    )
    result = fit(cfg)
    assert result.final["test_accuracy"] > 0.35, result.history


def _reparse(command):
    import shlex

    from ltpa.commands.train import config_from_args

    words = shlex.split(command)
    assert words[:2] == ["ltpa", "train"]
    return config_from_args(ltpa.cli.build_parser().parse_args(words[1:]))


def _recipe(cfg):
    from ltpa.config import _RUN_ONLY

    return {k: v for k, v in cfg.to_dict().items() if k not in _RUN_ONLY}


@pytest.mark.parametrize(
    "settings",
    [
        {
            "model": "vgg",
            "data": "fashion-mnist",
            "width": 0.125,
            "epochs": 3,
            "subset": 3000,
            "augment": "flip",
            "optimizer": "sgd",
            "nesterov": True,
            "lr_milestones": [2],
            "lr_factors": [0.5],
            "lr_schedule": "step",
            "model_kwargs": {"drop_scale": 0.0, "init_seed": 3},
            "eval_split": "val",
            "data_options": {"object_scale": [0.6, 0.8], "holdout": 64, "kind": "1e-3"},
        },
        {"preset": "vgg_att3_concat_pc-cifar100-variant-c", "epochs": 20, "drop_last": False},
        {"preset": "demo", "model": "vgg", "lr": 0.01},
    ],
)
def test_command_line_trains_the_same_config_again(settings):
    from ltpa.config import command_line

    preset = settings.pop("preset", None)
    cfg = resolve_config(preset=preset, overrides={**settings, "out": "/tmp/x", "threads": 3, "quiet": True})
    command = command_line(cfg.to_dict())
    assert "--out" not in command and "--threads" not in command
    assert _recipe(_reparse(command)) == _recipe(cfg)


def test_command_line_shows_paths_portably(tmp_path, monkeypatch):
    from ltpa.config import command_line, portable_path

    monkeypatch.chdir(tmp_path)
    assert portable_path(str(tmp_path / "data" / "caltech")) == "data/caltech"
    assert portable_path("data/caltech") == "data/caltech"
    assert portable_path("/srv/elsewhere/caltech101") == "caltech101"
    cfg = TrainConfig(model="vgg", data="image-folder", root=str(tmp_path / "data" / "pets"))
    assert "--root data/pets" in command_line(cfg.to_dict()) and str(tmp_path) not in command_line(
        cfg.to_dict()
    )


def test_dry_run_describes_the_default_schedule(capsys):
    flags = ["train", "--model", "vgg", "--width", "0.125", "--data-option", "num_train=64", "--dry-run"]
    assert ltpa.cli.main(flags) == 0
    out = capsys.readouterr().out
    assert "optimiser: AdamW" in out and "'lr': 0.003" in out
    assert (
        "learning rate: linear warm-up from 0.00012 to 0.003 over the first 10% of the steps, then a cosine"
        in out
    )


def test_a_config_path_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    errors: list[BaseException] = []
    reader = threading.Thread(target=lambda: _catch(errors, lambda: load_yaml(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # it blocks in open() until a writer comes: release it, then fail
        with open(fifo, "w"):
            pass
        pytest.fail("reading a FIFO as a config blocked")
    assert len(errors) == 1 and "is not a regular file" in str(errors[0])
    with pytest.raises(LTPAError, match="is not a regular file"):
        load_yaml(tmp_path)


def _catch(errors: list[BaseException], call: object) -> None:
    try:
        call()  # type: ignore[operator]
    except LTPAError as err:
        errors.append(err)


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"lr": float("inf")}, "lr must be a finite number, got inf"),
        ({"width": float("nan")}, "width must be a finite number, got nan"),
        ({"momentum": float("nan")}, "momentum must be a finite number"),
        ({"lr_factors": [0.5, float("inf")], "lr_milestones": [1, 2]}, "lr_factors must be a finite number"),
        ({"width": 1e6}, r"width in \(0, 4\], got lr .* and width 1000000\.0"),
        ({"seed": 2**70}, r"seed must be a whole number in 0\.\.2\*\*63-1, got 1180591620717411303424"),
        ({"seed": -1}, "seed must be a whole number in"),
    ],
)
def test_non_finite_and_out_of_range_numbers_are_refused(values: dict, words: str) -> None:
    with pytest.raises(LTPAError, match=words):
        resolve_config(overrides={"model": "vgg", "data": "cluttered-digits", **values})


def test_lr_inf_in_a_yaml_file_fails_dry_run_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``lr: .inf`` passed ``--dry-run`` and failed only at the first step."""
    (tmp_path / "c.yaml").write_text("model: vgg\ndata: cluttered-digits\nlr: .inf\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lr must be a finite number, got inf" in err
    assert (
        main(["train", "--model", "vgg", "--data", "cluttered-digits", "--seed", str(2**70), "--dry-run"])
        == 2
    )
    assert "seed must be a whole number in 0..2**63-1" in capsys.readouterr().err
