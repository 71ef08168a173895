"""Files ltpa writes into a user's folders: never through a symbolic link planted there, never over a file ltpa
did not write without ``--overwrite``, and whole or not at all (CONTRIBUTING.md §13, docs/reliability.md).

Each symlink test plants a link named like one of ltpa's files that points at a "victim" file outside the
folder, runs the command, and checks that the victim is byte for byte what it was."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_option_flags, tiny_train_config

import ltpa
from ltpa.checkpoint import save_checkpoint
from ltpa.cli import main
from ltpa.errors import LTPAError
from ltpa.utils import NoFollowFileHandler, atomic_write, open_no_follow

pytestmark = pytest.mark.usefixtures("single_thread")

VICTIM_TEXT = "precious data\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT)
    return path


def plant(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


# --------------------------------------------------------------------------------------- the shared helpers


def test_atomic_write_replaces_a_link_not_its_target(tmp_path: Path, victim: Path) -> None:
    link = plant(tmp_path / "out" / "eval.json", victim)
    atomic_write(link, lambda tmp: Path(tmp).write_text("{}\n"))
    assert not link.is_symlink() and link.read_text() == "{}\n"
    assert victim.read_text() == VICTIM_TEXT


def test_open_no_follow_refuses_a_link_in_one_line(tmp_path: Path, victim: Path) -> None:
    import os

    link = plant(tmp_path / "lock", victim)
    with pytest.raises(LTPAError, match=r"lock is a symbolic link; ltpa never writes through links") as info:
        open_no_follow(link, os.O_RDWR | os.O_CREAT)
    assert "\n" not in str(info.value)
    assert victim.read_text() == VICTIM_TEXT and link.is_symlink()
    fd = open_no_follow(tmp_path / "plain", os.O_WRONLY | os.O_CREAT)
    os.close(fd)
    assert (tmp_path / "plain").is_file()


def test_no_follow_file_handler_appends_to_files_and_refuses_links(tmp_path: Path, victim: Path) -> None:
    """The handler a log file in a user's folder (the study's study.log) is written with."""
    log = tmp_path / "study.log"
    log.write_text("earlier\n")
    handler = NoFollowFileHandler(log)
    handler.emit(logging.LogRecord("ltpa", logging.INFO, __file__, 1, "new line", None, None))
    handler.close()
    assert log.read_text() == "earlier\nnew line\n"
    with pytest.raises(LTPAError, match="symbolic link"):
        NoFollowFileHandler(plant(tmp_path / "other.log", victim))
    assert victim.read_text() == VICTIM_TEXT


# ------------------------------------------------------------------------------------------------ training


def test_a_lock_file_link_is_refused_and_its_target_kept(tmp_path: Path, victim: Path) -> None:
    from ltpa.train import LOCK_FILE, fit

    plant(tmp_path / "run" / LOCK_FILE, victim)
    with pytest.raises(LTPAError, match=r"\.ltpa\.lock is a symbolic link"):
        fit(tiny_train_config(tmp_path, epochs=1))
    assert victim.read_text() == VICTIM_TEXT


def test_a_write_test_link_in_a_resumed_run_is_refused_and_its_target_kept(
    tmp_path: Path, victim: Path
) -> None:
    """A run folder unpacked from elsewhere may carry links; --resume does not clear the folder first."""
    from ltpa.train import fit

    fit(tiny_train_config(tmp_path, epochs=1))
    plant(tmp_path / "run" / ".ltpa-write-test", victim)
    with pytest.raises(LTPAError, match=r"\.ltpa-write-test is a symbolic link"):
        fit(tiny_train_config(tmp_path, epochs=2), resume=tmp_path / "run")
    assert victim.read_text() == VICTIM_TEXT


def test_clear_run_removes_a_link_named_like_a_run_file_not_its_target(tmp_path: Path) -> None:
    from ltpa.train import clear_run

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "inner").mkdir(parents=True)
    (elsewhere / "inner" / "keep.txt").write_text("keep")
    plant(tmp_path / "run" / "config.yaml", elsewhere)  # a link to a folder, named like ltpa's file
    clear_run(tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()
    assert (elsewhere / "inner" / "keep.txt").read_text() == "keep"


# ---------------------------------------------------------------------------------------------- evaluation


def test_eval_replaces_a_planted_confusion_png_link_and_keeps_its_target(
    tmp_path: Path, victim: Path
) -> None:
    torch.manual_seed(0)
    model = ltpa.create_model("vgg_att2_concat_pc", num_classes=10, width=0.0625, img_size=16)
    save_checkpoint(tmp_path / "tiny" / "last", model, epoch=1)
    out = tmp_path / "out"
    link = plant(out / "confusion_tiny.png", victim)
    args = [
        "eval",
        str(tmp_path / "tiny"),
        "--data",
        "cluttered-digits",
        *data_option_flags(),
        "--limit",
        "8",
    ]
    assert main([*args, "--out", str(out)]) == 0
    assert victim.read_text() == VICTIM_TEXT
    assert not link.is_symlink() and link.read_bytes().startswith(b"\x89PNG")


# -------------------------------------------------------------------------------------------- data --grid


def _grid_args(path: Path) -> list[str]:
    return ["data", "cluttered-digits", *data_option_flags(), "--grid-count", "4", "--grid", str(path)]


def test_data_grid_through_a_link_a_folder_and_a_full_disk(
    tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    link = plant(tmp_path / "grid.png", victim)
    assert main(_grid_args(link)) == 0
    assert victim.read_text() == VICTIM_TEXT and link.read_bytes().startswith(b"\x89PNG")

    assert main(_grid_args(tmp_path)) == 2  # a folder: was a traceback
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a folder; give the PNG file to write" in err

    from matplotlib.figure import Figure

    def full(self: Figure, fname: str, **kwargs: object) -> None:  # the disk fills halfway through the PNG
        with open(fname, "wb") as fh:
            fh.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", str(fname))

    monkeypatch.setattr(Figure, "savefig", full)
    before = link.read_bytes()
    assert main(_grid_args(link)) == 2  # was exit 0 with a truncated PNG
    assert "the disk is full" in capsys.readouterr().err
    assert link.read_bytes() == before  # the earlier grid is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "victim.txt"]  # no temporary left


# ------------------------------------------------------------------------------------------------- export


@pytest.fixture
def export_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    torch.manual_seed(0)
    model = ltpa.create_model("vgg_att2_concat_pc", num_classes=3, width=0.0625, img_size=16)
    save_checkpoint(tmp_path / "run" / "last", model, epoch=1)
    return tmp_path / "run"


def test_hf_export_keeps_a_users_readme_and_config_unless_overwrite(
    export_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("# my project\n")
    (out / "config.json").write_text('{"my": "settings"}\n')
    args = ["export", str(export_run), "--format", "hf", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.json, README.md that ltpa did not write" in err
    assert (out / "README.md").read_text() == "# my project\n" and not (out / "model.safetensors").exists()
    assert main([*args, "--overwrite"]) == 0
    assert (out / "README.md").read_text().startswith("---")
    assert main(args) == 0  # an earlier ltpa export is replaced without asking


@pytest.mark.parametrize("name", ["last.safetensors", "last.json"])
def test_export_file_onto_the_checkpoint_being_exported_is_refused(
    export_run: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p.name: p.read_bytes() for p in export_run.iterdir()}
    for fmt in ("onnx", "torchscript"):
        assert main(["export", str(export_run), "--format", fmt, "--file", str(export_run / name)]) == 2
        assert "is the checkpoint being exported" in capsys.readouterr().err
        assert (
            main(
                ["export", str(export_run), "--format", fmt, "--overwrite", "--file", str(export_run / name)]
            )
            == 2
        )
    assert {p.name: p.read_bytes() for p in export_run.iterdir()} == before
    ltpa.load_model(export_run)


def test_export_replaces_its_own_files_but_not_a_users(
    export_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "model.pt"
    mine.write_bytes(b"my own TorchScript model, not from ltpa")
    args = ["export", str(export_run), "--format", "torchscript", "--no-check", "--file", str(mine)]
    assert main(args) == 2
    assert "exists and is not an ltpa export" in capsys.readouterr().err
    assert mine.read_bytes() == b"my own TorchScript model, not from ltpa"
    assert main([*args, "--overwrite"]) == 0
    assert main(args) == 0 and mine.read_bytes()[:2] == b"PK"  # ltpa's own export: replaced without asking
    onnx_file = tmp_path / "notes.onnx"
    onnx_file.write_text("my notes")
    assert main(["export", str(export_run), "--no-check", "--file", str(onnx_file)]) == 2
    assert onnx_file.read_text() == "my notes"
    assert main(["export", str(export_run), "--no-check", "--file", str(onnx_file), "--overwrite"]) == 0
    assert main(["export", str(export_run), "--no-check", "--file", str(onnx_file)]) == 0


def test_a_kill_between_the_hf_exports_moves_leaves_a_folder_that_is_refused(
    export_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from ltpa.export import export_model

    out = tmp_path / "shared"
    first = ltpa.load_model(export_run)
    export_model(first, out, "hf")
    torch.manual_seed(5)
    second = ltpa.create_model("vgg_att2_concat_pc", num_classes=3, width=0.0625, img_size=16)
    replace = os.replace

    def killed_before_the_config(src: str, dst: str) -> None:
        if Path(dst) == out / "config.json":
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_before_the_config)
    with pytest.raises(KeyboardInterrupt):
        export_model(second, out, "hf")
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(LTPAError, match="the folder mixes two exports"):
        ltpa.LTPAModel.from_pretrained(out)
    with pytest.raises(LTPAError, match="the folder mixes two exports"):
        ltpa.create_model("vgg_att2_concat_pc", pretrained=str(out))
    export_model(second, out, "hf")  # exporting again repairs it
    ltpa.LTPAModel.from_pretrained(out)


# --------------------------------------------------------------------------- image-folder classes by name

COLOURS = {"blue": (20, 40, 230), "green": (30, 200, 40), "red": (220, 30, 30)}


def _colour_folder(root: Path, names: list[str], per_class: int = 4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(COLOURS[name]) + rng.integers(-20, 20, (16, 16, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint that tells blue, green and red (classes 0, 1, 2) apart, with its class names saved."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: the single_thread fixture does not cover it
    torch.manual_seed(0)
    model = ltpa.create_model("vgg", num_classes=3, width=0.0625, img_size=16, drop_scale=0.0)
    x = torch.stack(
        [torch.tensor(c, dtype=torch.float32).view(3, 1, 1).expand(3, 16, 16) / 255 for c in COLOURS.values()]
    )
    y = torch.arange(3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        noisy = (x + 0.08 * torch.randn(12, 3, 16, 16).view(4, 3, 3, 16, 16)).view(12, 3, 16, 16).clamp(0, 1)
        loss = torch.nn.functional.cross_entropy(model(noisy), y.repeat(4))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    root = tmp_path_factory.mktemp("colours")
    save_checkpoint(root / "colours" / "last", model.eval(), epoch=1, extra={"classes": list(COLOURS)})
    return root / "colours"


def _eval(run: Path, folder: Path, out: Path) -> int:
    args = ["eval", str(run), "--data", "image-folder", "--root", str(folder), "--split", "all"]
    return main([*args, "--out", str(out)])


def test_image_folder_eval_matches_classes_by_name_not_position(colour_run: Path, tmp_path: Path) -> None:
    import json

    full = _colour_folder(tmp_path / "full", ["blue", "green", "red"])
    assert _eval(colour_run, full, tmp_path / "e1") == 0
    assert json.loads((tmp_path / "e1" / "eval.json").read_text())["colours"]["accuracy"] == 1.0
    # without the blue folder, green and red were labels 0 and 1 by position and scored 0%
    partial = _colour_folder(tmp_path / "partial", ["green", "red"])
    (partial / "blue").mkdir()  # an empty class folder does not count either
    assert _eval(colour_run, partial, tmp_path / "e2") == 0
    result = json.loads((tmp_path / "e2" / "eval.json").read_text())["colours"]
    assert result["accuracy"] == 1.0 and result["n"] == 8
    assert result["per_class"] == {"blue": None, "green": 1.0, "red": 1.0}


def test_image_folder_with_classes_the_model_does_not_know_is_refused(
    colour_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _colour_folder(tmp_path / "other", ["green", "red"])
    (folder / "red").rename(folder / "crimson")
    assert _eval(colour_run, folder, tmp_path / "e") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "trained on the classes blue, green, red; image-folder has 1 it does not know (crimson)" in err
    assert not (tmp_path / "e" / "eval.json").exists()


# ------------------------------------------------------------------------------------ runs and user files


def test_train_into_the_folder_of_its_own_config_keeps_the_users_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``train --config exp/config.yaml --out exp`` replaced the user's config.yaml and metrics.csv."""
    import yaml

    exp = tmp_path / "exp"
    exp.mkdir()
    settings = tiny_train_config(tmp_path, epochs=1).to_dict()
    del settings["out"]
    (exp / "config.yaml").write_text("# my experiment\n" + yaml.safe_dump(settings))
    (exp / "metrics.csv").write_text("my,numbers\n1,2\n")
    before = {p.name: p.read_bytes() for p in exp.iterdir()}
    assert main(["train", "--config", str(exp / "config.yaml"), "--out", str(exp)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not an ltpa run (config.yaml, metrics.csv)" in err
    assert {p.name: p.read_bytes() for p in exp.iterdir()} == before  # no lock file either


def test_an_interrupted_run_is_still_restarted_in_place(tmp_path: Path) -> None:
    """A folder a training claimed (its lock file) and left before its first epoch ended starts again."""
    from ltpa.train import LOCK_FILE, fit, foreign_files

    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text("123\n")
    (run / "config.yaml").write_text("model: vgg\n")
    assert foreign_files(run) == []
    result = fit(tiny_train_config(tmp_path, epochs=1))
    assert (result.run_dir / "last.safetensors").is_file()


def test_demo_does_not_redo_a_train_run_named_like_its_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ltpa.demo import DemoConfig, _prepare_out
    from ltpa.train import fit

    fit(tiny_train_config(tmp_path / "demo", name="vgg", epochs=1))
    run = tmp_path / "demo" / "vgg"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    args = ["demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--num-train", "64", "--num-test", "32"]
    assert main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the earlier training's log lines
    assert err.startswith("ltpa demo: error:") and "holds a training that is not the demo's" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    # the demo's own (interrupted) training is redone
    cfg = DemoConfig(out=str(tmp_path / "demo2"), epochs=1, num_train=64, num_test=32, quiet=True)
    mine = tmp_path / "demo2" / "vgg"
    mine.mkdir(parents=True)
    import yaml

    (mine / "config.yaml").write_text(yaml.safe_dump(cfg.train_config("vgg").to_dict()))
    (mine / "run.json").write_text('{"argv": [], "started": "now"}')
    _prepare_out(tmp_path / "demo2", ["vgg"], cfg=cfg)
    assert list(mine.iterdir()) == []


# ---------------------------------------------------------------------------------------------- full disk


def _disk_fills(monkeypatch: pytest.MonkeyPatch, after: int = 0) -> list[str]:
    """From the ``after + 1``-th weights file on, safetensors fails as it does on a full disk (checked on a
    64 KiB tmpfs: ``SafetensorError("Error while serializing: I/O error: No space left on device (os error
    28)")``, after writing part of the file)."""
    from safetensors import SafetensorError

    import ltpa.checkpoint

    real = ltpa.checkpoint.save_file
    calls: list[str] = []

    def save_file(tensors, filename, metadata=None):  # type: ignore[no-untyped-def]
        calls.append(str(filename))
        if len(calls) <= after:
            return real(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(b"\0" * 100)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(ltpa.checkpoint, "save_file", save_file)  # what every weights writer calls
    return calls


def test_a_full_disk_during_training_is_one_line_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    settings = tiny_train_config(tmp_path, epochs=2).to_dict()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(settings))
    with monkeypatch.context() as m:
        _disk_fills(m, after=3)  # epoch 1 writes resume, last, best; the disk fills at epoch 2's resume state
        assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2  # was a SafetensorError traceback
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "resume.safetensors: No space left on device (the disk is full" in err and ".tmp" not in err
    run = tmp_path / "run"
    assert ltpa.load_model(run).checkpoint["epoch"] == 1
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # space freed: the run continues
    assert ltpa.load_model(run).checkpoint["epoch"] == 2


def test_a_full_disk_during_an_hf_export_is_one_line_and_keeps_the_earlier_export(
    export_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shared"
    assert main(["export", str(export_run), "--format", "hf", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _disk_fills(monkeypatch)
    assert main(["export", str(export_run), "--format", "hf", "--out", str(out)]) == 2  # was SafetensorError
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1 and f"cannot use {out}: No space left on device (the disk is full" in err
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary folder


# ------------------------------------------------------------------------------------- killed temporaries


def test_temporaries_a_killed_training_left_are_removed_on_resume(tmp_path: Path) -> None:
    """A SIGKILL inside atomic_write leaves its hidden temporary file; the resumed run removes it."""
    from ltpa.train import fit

    fit(tiny_train_config(tmp_path, epochs=1))
    run = tmp_path / "run"
    stale = [run / ".last.safetensors.k3j4x.tmp", run / ".resume.safetensors.q9_1z.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 64)
    (run / "notes.tmp").write_text("mine")
    fit(tiny_train_config(tmp_path, epochs=2), resume=run)
    assert not any(p.exists() for p in stale)
    assert (run / "notes.tmp").read_text() == "mine"


def test_temporaries_a_killed_export_left_are_removed_by_the_next(export_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    stale = tmp_path / ".model.onnx.a1b2c3.tmp"
    stale.write_bytes(b"partial")
    other = tmp_path / ".other.onnx.a1b2c3.tmp"
    other.write_bytes(b"not ours to remove")
    assert main(["export", str(export_run), "--no-check", "--file", str(out)]) == 0
    assert not stale.exists() and other.exists() and out.is_file()


def test_two_evaluations_into_one_folder_keep_both_reports(
    colour_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(colour_run, other)
    folder = _colour_folder(tmp_path / "data", ["blue", "green", "red"])
    out = tmp_path / "e"
    assert _eval(colour_run, folder, out) == 0
    assert _eval(other, folder, out) == 0  # the first report was replaced by the second
    assert set(json.loads((out / "eval.json").read_text())) == {"colours", "other"}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "eval.json").write_text('{"my": "notes"}')
    assert _eval(colour_run, folder, mine) == 2
    assert "is not an ltpa evaluation report" in capsys.readouterr().err
    assert (mine / "eval.json").read_text() == '{"my": "notes"}'
