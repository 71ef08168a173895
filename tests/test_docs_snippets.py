"""The documentation's code runs as written (issue 21): README.md's Python blocks run in a fresh interpreter,
and every ``ltpa ...`` (and benchmark script) command in README.md, docs/*.md and recipes/README.md parses
with the real command-line parser; the ``ltpa train`` ones also resolve their config with ``--dry-run``.

What a snippet needs and a fresh clone cannot have offline (a trained run folder, weights on the Hugging Face
Hub, the repository's path) is made for it in a scratch folder at the path the snippet names; a block that
cannot run here would be listed in ``NOT_RUN`` with the reason (none is). The blocks and commands that train
(README's ``fit()`` example) or evaluate a run (its ``predict``, ``visualize`` and ``--resume`` lines) run in
the slow lane.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import cache_hub_repo, tiny_train_config

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = sorted(
    [REPO_ROOT / "README.md", REPO_ROOT / "recipes" / "README.md"]
    + [p for p in (REPO_ROOT / "docs").glob("*.md") if not p.name.startswith("results")]
)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the first line of code (after the fence)
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


def extract_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with the line their code starts on."""
    blocks: list[Block] = []
    lang: str | None = None
    start = 0
    lines: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"^\s*```\s*([\w+-]*)", line)
        if fence and lang is None:
            lang, start, lines = fence.group(1).lower(), number + 1, []
        elif fence:
            blocks.append(Block(path, start, lang or "", "\n".join(lines)))
            lang = None
        elif lang is not None:
            lines.append(line)
    assert lang is None, f"{path}: a code fence is never closed"
    return blocks


def test_extract_blocks_finds_fences_and_their_lines(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n```python\nx = 1\n```\n\n```\nltpa models\n```\n", encoding="utf-8")
    blocks = extract_blocks(page)
    assert [(b.line, b.lang, b.text) for b in blocks] == [(3, "python", "x = 1"), (7, "", "ltpa models")]


# ---------------------------------------------------------------------------------------------------------
# README.md's Python blocks, run

# Keyed by a block's first line: what runs before the block (the README's blocks continue one another, and
# the fit() example names the user's own datasets).
PRELUDES: dict[str, str] = {
    'learned = ltpa.create_model("vgg_att2_concat_pc", width=0.125, init_seed=0)': "import ltpa\n",
    "from ltpa.config import TrainConfig": (
        "from ltpa.data import build_dataset\n"
        "_small = dict(num_train=96, num_test=32)\n"
        'my_train_set = build_dataset("cluttered-digits", split="train", **_small)\n'
        'my_val_set = build_dataset("cluttered-digits", split="test", **_small)\n'
    ),
}
# Keyed by a block's first line: assertions run after the block, so that what its comments promise (shapes,
# parameter counts) is checked too.
CHECKS: dict[str, str] = {
    "import torch": "assert g_a.shape == (8, 256) and a.shape == (8, 32, 32)\n",
    "import torch, ltpa": (
        "assert sum(p.numel() for p in model.parameters()) == 19_971_751\n"
        "assert out.logits.shape == (2, 100)\n"
        "assert [tuple(m.shape) for m in out.maps] == [(2, 32, 32), (2, 16, 16), (2, 8, 8)]\n"
        "assert [i['stride'] for i in model.attn_info] == [1, 2, 4]\n"
    ),
    "import timm, torch, ltpa": (
        "assert out.logits.shape == (2, 200)\n"
        "assert [tuple(m.shape) for m in out.maps] == [(2, 14, 14), (2, 7, 7)]\n"
    ),
    "import ltpa, torch": (
        "assert f.shape == (2, 512, 8, 8)\n"
        "assert pooled.shape == (2, model.num_features)\n"
        "assert out.logits.shape == logits.shape\n"
        "assert model.num_classes == 10\n"
        "model.eval()\n"
        "assert torch.allclose(model.forward_head(model.forward_features(x)), model(x), atol=1e-5)\n"
    ),
    "from ltpa.data import build_dataset, load_tensors": (
        "import torch\n"
        "assert (images.dtype, labels.dtype, masks.dtype) == (torch.uint8, torch.int64, torch.bool)\n"
    ),
    "from ltpa.config import TrainConfig": "assert len(result.history) == 3 and result.model is not None\n",
}
# Keyed by a block's first line: why it is not run here. Empty: every Python block of README.md runs.
NOT_RUN: dict[str, str] = {}
# Keyed by a block's first line: blocks that run in the slow lane only (they train).
SLOW = {"from ltpa.config import TrainConfig": "fit() trains 3 epochs"}
# Placeholders in the snippets -> what they stand for in the scratch folder.
PLACEHOLDERS = {"path/to/ltpa": str(REPO_ROOT)}
HUB_ID = ("ORG", "NAME")  # the README's hf-hub:ORG/NAME, laid out in a local Hugging Face cache


def _readme_python_blocks() -> list[Block]:
    return [b for b in extract_blocks(REPO_ROOT / "README.md") if b.lang == "python"]


def _first_line(block: Block) -> str:
    return next(line.strip() for line in block.text.splitlines() if line.strip())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch folder holding what the README's snippets name: ``runs/att2`` (a 1-epoch ``ltpa train`` run
    of the README's model), ``weights/att2`` (a ``save_pretrained`` folder) and ``hf-hub:ORG/NAME`` in a
    local Hugging Face cache (``hf-cache``)."""
    import ltpa
    from ltpa.train import fit

    root = tmp_path_factory.mktemp("docs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = tiny_train_config(
            root / "runs",
            "att2",
            model="vgg_att2_concat_pc",
            epochs=1,
            data_options={"num_train": 64, "num_test": 32},
        )
        fit(cfg)
        ltpa.create_model("vgg_att2_concat_pc", num_classes=10).save_pretrained(root / "weights" / "att2")
        hub = root / "hub-upload"
        ltpa.create_model("vgg_att2_concat_pc", num_classes=10).save_pretrained(hub)
        cache_hub_repo(hub, root / "hf-cache", "/".join(HUB_ID))
    finally:
        torch.set_num_threads(threads)
    return root


def _run_python(code: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        HF_HUB_OFFLINE="1",
        HF_HUB_CACHE=str(cwd / "hf-cache"),
        LTPA_THREADS="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_readme_has_python_blocks_and_every_one_is_run_or_listed():
    blocks = _readme_python_blocks()
    assert len(blocks) >= 5
    firsts = [_first_line(b) for b in blocks]
    assert len(set(firsts)) == len(firsts), (
        "two README blocks start alike; the tables here cannot tell them apart"
    )
    stale = (set(PRELUDES) | set(NOT_RUN) | set(SLOW) | set(CHECKS)) - set(firsts)
    assert not stale, f"PRELUDES/CHECKS/NOT_RUN/SLOW name blocks README.md no longer has: {sorted(stale)}"


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b, marks=pytest.mark.slow) if _first_line(b) in SLOW else b
        for b in _readme_python_blocks()
    ],
    ids=lambda b: b.where,
)
def test_readme_python_block_runs(block: Block, workspace: Path):
    first = _first_line(block)
    if first in NOT_RUN:
        pytest.skip(NOT_RUN[first])
    code = block.text
    for placeholder, value in PLACEHOLDERS.items():
        code = code.replace(placeholder, value)
    code = PRELUDES.get(first, "") + code + "\n" + CHECKS.get(first, "")
    proc = _run_python(code, workspace)
    assert proc.returncode == 0, f"{block.where} fails as written:\n{proc.stderr[-3000:]}"


# ---------------------------------------------------------------------------------------------------------
# Shell commands, parsed

# Shell variables the recipes set in a loop, by name -> the first value the loop gives them.
LOOP_VALUES = re.compile(r"^for (\w+) in (\S+)")
ASSIGNMENT = re.compile(r'^(\w+)="([^"]*)"$')


@dataclass(frozen=True)
class Command:
    where: str
    argv: list[str]


def _logical_lines(block: Block) -> list[tuple[int, str]]:
    """``block``'s lines with ``\\`` continuations joined, each with the line it starts on (comments kept)."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for offset, raw in enumerate(block.text.splitlines()):
        if not pending:
            start = block.line + offset
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text, pending = (pending + line).strip(), ""
        if text:
            out.append((start, text))
    return out


def _commands(kind: str) -> list[Command]:
    """Every command of ``kind`` ("ltpa", "torchrun" or "benchmarks") in the shell blocks (fenced as bash, sh or
    nothing) of the documentation, with the block's variables substituted."""
    found: list[Command] = []
    for path in DOC_FILES:
        for block in extract_blocks(path):
            if block.lang not in ("", "bash", "sh", "shell", "console"):
                continue
            variables: dict[str, str] = {}
            for line, text in _logical_lines(block):
                where = f"{path.relative_to(REPO_ROOT)}:{line}"
                if m := ASSIGNMENT.match(text):
                    variables[m.group(1)] = " ".join(m.group(2).split())
                    continue
                if not text.startswith(("ltpa ", "torchrun ", "for ", ".venv/", "python")):
                    continue  # prose, a listing, make targets
                if m := LOOP_VALUES.match(text):
                    variables[m.group(1)] = m.group(2)
                    continue
                for name, value in variables.items():
                    text = text.replace(f"${name}", value)
                argv = shlex.split(text, comments=True)
                if kind == "torchrun" and argv[:1] == ["torchrun"]:
                    found.append(Command(where, argv[1:]))
                if argv[:1] == ["torchrun"] and "-m" in argv:  # torchrun ... -m ltpa ARGS
                    argv = ["ltpa", *argv[argv.index("-m") + 2 :]]
                if kind == "ltpa" and argv[:1] == ["ltpa"]:
                    found.append(Command(where, argv[1:]))
                elif kind == "benchmarks" and any(a.startswith("benchmarks/") for a in argv[:2]):
                    script = next(a for a in argv[:2] if a.startswith("benchmarks/"))
                    found.append(Command(where, [script, *argv[argv.index(script) + 1 :]]))
    return found


def _parse(argv: list[str]) -> tuple[Any, str]:
    """Parses ``argv`` with the real ``ltpa`` parser; returns (namespace or None, argparse's message)."""
    from ltpa.cli import build_parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return build_parser().parse_args(argv), ""
        except SystemExit:
            return None, err.getvalue().strip().splitlines()[-1]


def test_the_docs_hold_ltpa_commands_of_every_kind():
    subcommands = {c.argv[0] for c in _commands("ltpa")}
    assert {
        "train",
        "eval",
        "visualize",
        "predict",
        "attack",
        "segment",
        "localize",
        "transfer",
        "report",
    } <= (subcommands)


def test_every_ltpa_command_in_the_docs_parses():
    failures = []
    for command in _commands("ltpa"):
        args, message = _parse(command.argv)
        if args is None:
            failures.append(f"{command.where}: ltpa {shlex.join(command.argv)}\n    {message}")
    assert not failures, "commands in the docs that do not parse:\n" + "\n".join(failures)


def test_every_dataset_the_docs_name_is_registered():
    from ltpa.data import list_datasets

    known = set(list_datasets())
    named = {
        (c.where, c.argv[i + 1])
        for c in _commands("ltpa")
        for i, a in enumerate(c.argv[:-1])
        if a == "--data"
    }
    assert named
    unknown = sorted(f"{where}: --data {name}" for where, name in named if name not in known)
    assert not unknown, "datasets the docs name that ltpa does not know:\n" + "\n".join(unknown)


# Placeholders of the commands written inline in the prose -> sample values.
INLINE_PLACEHOLDERS = {
    "GAP_RUN": "runs/gap",
    "RUN": "runs/att2",
    "DIR": "out",
    "NAME": "cluttered-digits",
    "PATH": "out/model.onnx",
}


def _inline_commands() -> list[Command]:
    """The ``ltpa`` commands written inline (`` `ltpa eval RUN --data ...` ``) that give arguments, with their
    placeholders filled in; spans that show a syntax (``...``, ``|``, ``[...]``) or ask for help are left out."""
    from ltpa.cli import _COMMANDS

    found = []
    for path in DOC_FILES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for span in re.findall(r"`(ltpa [^`]+)`", line):
                argv = shlex.split(span)[1:]
                if (
                    len(argv) < 2
                    or argv[0] not in _COMMANDS
                    or any(mark in span for mark in ("...", "…", "|", "[", "--help"))
                ):
                    continue
                argv = [re.sub(r"<(\w+)>", r"\1", a) for a in argv]
                argv = [INLINE_PLACEHOLDERS.get(a, a) for a in argv]
                found.append(Command(f"{path.relative_to(REPO_ROOT)}:{number}", argv))
    return found


def test_every_inline_ltpa_command_in_the_docs_parses():
    commands = _inline_commands()
    assert len(commands) >= 8
    failures = []
    for command in commands:
        args, message = _parse(command.argv)
        if args is None:
            failures.append(f"{command.where}: `ltpa {shlex.join(command.argv)}`\n    {message}")
    assert not failures, "inline commands in the docs that do not parse:\n" + "\n".join(failures)


def test_every_make_target_the_docs_name_exists():
    targets = set(re.findall(r"^([\w-]+):", (REPO_ROOT / "Makefile").read_text(encoding="utf-8"), re.M))
    named = {
        (f"{path.relative_to(REPO_ROOT)}", target)
        for path in DOC_FILES
        for target in re.findall(r"(?:^|`)make ([\w-]+)", path.read_text(encoding="utf-8"), re.M)
    }
    assert {t for _, t in named} >= {"demo", "test"}
    missing = sorted(f"{where}: make {target}" for where, target in named if target not in targets)
    assert not missing, "make targets the docs name that the Makefile lacks:\n" + "\n".join(missing)


def test_every_data_option_the_docs_give_is_an_option_of_its_dataset():
    """``--data-option KEY=VALUE`` keys against the options of the ``--data`` before them (that dataset's
    ``build_dataset`` keywords), so that a renamed option fails here and not on a user's GPU."""
    from ltpa.data import dataset_options

    checked, failures = 0, []
    for command in _commands("ltpa"):
        data = None
        for flag, value in zip(command.argv, command.argv[1:]):
            if flag == "--data":
                data = value
            elif flag == "--data-option":
                key = value.split("=", 1)[0]
                assert data is not None, f"{command.where}: --data-option before any --data"
                checked += 1
                if key not in dataset_options(data):
                    failures.append(f"{command.where}: --data-option {value} (not an option of {data})")
    assert checked >= 5
    assert not failures, "dataset options in the docs that do not exist:\n" + "\n".join(failures)


def test_every_torchrun_line_in_the_docs_parses_and_runs_ltpa():
    from torch.distributed.run import get_args_parser

    commands = _commands("torchrun")
    assert commands
    for command in commands:
        args = get_args_parser().parse_args(command.argv)
        assert args.module and args.training_script == "ltpa", command.where


def test_the_parse_check_catches_a_broken_command():
    assert _parse(["train", "--epoch", "3"])[0] is None  # abbreviations are refused
    assert _parse(["eval"])[0] is None
    assert _parse(["train", "--model", "vgg", "--epochs", "3"])[0] is not None


def _dry_runnable() -> list[Command]:
    """The ``ltpa train`` commands that start a new run (not --resume or --list-presets)."""
    return [
        c
        for c in _commands("ltpa")
        if c.argv[0] == "train" and not ({"--resume", "--list-presets", "--help", "-h"} & set(c.argv))
    ]


def test_every_ltpa_train_command_in_the_docs_resolves_with_dry_run(
    tmp_path, monkeypatch, capsys, single_thread
):
    """``--dry-run`` resolves the preset/flags into a config and builds the model (on the meta device) and the
    optimiser; data that is not here (CIFAR, CUB...) is reported, not needed, and so is an ``--init-from``
    run not trained yet: the commands run as written in an empty folder."""
    from ltpa.cli import main

    monkeypatch.chdir(tmp_path)
    commands = _dry_runnable()
    assert len(commands) >= 20
    failures = []
    for command in commands:
        argv = [*command.argv, "--dry-run"] if "--dry-run" not in command.argv else list(command.argv)
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse refused it (test_every_ltpa_command_in_the_docs_parses says why)
            status = exc.code if isinstance(exc.code, int) else 2
        out, err = capsys.readouterr()
        if status != 0 or "# model:" not in out:
            failures.append(f"{command.where}: ltpa {shlex.join(argv)}\n    {err.strip()[-500:]}")
    assert not failures, "ltpa train commands in the docs that do not resolve:\n" + "\n".join(failures)
    assert not list(tmp_path.glob("runs/*/config.yaml")), "a dry run wrote a run folder"


def test_list_presets_as_the_readme_shows(capsys):
    from ltpa.cli import main

    assert main(["train", "--list-presets"]) == 0
    presets = set(capsys.readouterr().out.split())
    named = {c.argv[c.argv.index("--preset") + 1] for c in _commands("ltpa") if "--preset" in c.argv}
    assert named and named <= presets, f"the docs name presets that do not exist: {sorted(named - presets)}"


def _benchmark_parser(script: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_doc_{Path(script).stem}", REPO_ROOT / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_args


def test_every_benchmark_command_in_the_docs_parses():
    commands = _commands("benchmarks")
    assert {c.argv[0] for c in commands} >= {"benchmarks/throughput.py", "benchmarks/profile_step.py"}
    failures = []
    for command in commands:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                _benchmark_parser(command.argv[0])(command.argv[1:])
            except SystemExit:
                failures.append(f"{command.where}: {shlex.join(command.argv)}\n    {err.getvalue().strip()}")
    assert not failures, "benchmark commands in the docs that do not parse:\n" + "\n".join(failures)


# ---------------------------------------------------------------------------------------------------------
# README.md's commands that need only a run folder and images, run

RUN_AS_WRITTEN = ("predict", "visualize")  # and `train --resume`; the rest need data sets not here


@pytest.mark.slow
def test_readme_commands_on_a_run_folder_run_as_written(
    workspace, tmp_path, monkeypatch, capsys, single_thread
):
    """README.md's ``ltpa predict``, ``ltpa visualize`` (with ``--cam runs/gap``) and ``ltpa train --resume``
    lines, run unchanged on 1-epoch runs and two small images of the names the README uses."""
    import shutil

    import numpy as np
    from PIL import Image

    from ltpa.cli import main
    from ltpa.train import fit

    shutil.copytree(workspace / "runs", tmp_path / "runs")
    fit(
        tiny_train_config(tmp_path / "runs", "gap", model="vgg_gap", epochs=1, data_options={"num_train": 64})
    )
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    commands = [
        c
        for c in _commands("ltpa")
        if c.where.startswith("README.md")
        and (c.argv[0] in RUN_AS_WRITTEN or c.argv[:2] == ["train", "--resume"])
    ]
    assert len(commands) == 3
    for command in commands:
        for name in command.argv:
            if name.endswith((".jpg", ".png")) and not Path(name).exists():
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(name)
        assert main(command.argv) == 0, f"{command.where}: ltpa {shlex.join(command.argv)}"
    out = capsys.readouterr().out
    assert "runs/att2: epoch 1" in out  # the resume found the finished run
    assert (tmp_path / "runs" / "visualize" / "attention.png").is_file()
    assert sorted(p.name for p in (tmp_path / "runs" / "predict").glob("*.png"))
