"""Training configs read from files and flags (ltpa.config): every value is checked before anything is built."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from ltpa.cli import main
from ltpa.config import load_yaml, resolve_config
from ltpa.errors import LTPAError


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
