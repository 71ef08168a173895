"""The command line's own options: -v and --quiet before or after the command name."""

import argparse
import logging

import pytest

import ltpa.cli
from ltpa.utils import log


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["-v", "models", "vgg"], logging.DEBUG),
        (["models", "-v", "vgg"], logging.DEBUG),
        (["models", "--verbose", "vgg"], logging.DEBUG),
        (["--quiet", "models", "vgg"], logging.WARNING),
        (["-q", "models", "vgg"], logging.WARNING),
        (["models", "--quiet", "vgg"], logging.WARNING),
        (["models", "vgg"], logging.INFO),
    ],
)
def test_verbosity_before_or_after_the_command(argv, level, capsys):
    assert ltpa.cli.main(argv) == 0
    assert log.level == level


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_before_the_command_reaches_its_own_quiet_flag(where, capsys):
    rest = ["train", "--model", "vgg", "--dry-run"]
    argv = ["--quiet", *rest] if where == "before" else [*rest, "--quiet"]
    assert ltpa.cli.main(argv) == 0
    assert "\nquiet: true\n" in capsys.readouterr().out  # the run's config takes it
    args = ltpa.cli.build_parser().parse_args(["-v", "eval", "runs/x"])
    assert args.verbose and not args.quiet  # eval's own --quiet default does not hide -v


def test_verbose_and_quiet_together_is_an_error(capsys):
    assert ltpa.cli.main(["-v", "models", "--quiet"]) == 2
    assert "-v and --quiet contradict" in capsys.readouterr().err


def test_models_lists_timm_and_torchvision_backbones(capsys):
    import timm

    assert ltpa.cli.main(["models", "timm/resnet1*"]) == 0
    out = capsys.readouterr().out
    listed = [line for line in out.splitlines() if line.startswith("timm/")]
    assert "timm/resnet18" in listed and len(listed) == len(timm.list_models("resnet1*")) > 3
    assert "ltpa models timm/" in out and "_att2_pc" in out
    assert ltpa.cli.main(["models", "tv/resnet", "--json"]) == 0
    assert "tv/resnet18" in capsys.readouterr().out
    # a full name: its parameters and attended levels
    assert ltpa.cli.main(["models", "timm/test_resnet_att2_pc", "--img-size", "64"]) == 0
    row = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("timm/test_resnet_att2_pc")
    ]
    assert len(row) == 1 and "@ 16" in row[0] and "@ 32" in row[0]


def test_ltpa_help_lists_every_command_without_importing_pytorch() -> None:
    """`ltpa --help` builds no subcommand (they import PyTorch, seconds of start-up); its summaries are the
    ones the commands' own parsers give."""
    import subprocess
    import sys

    code = (
        "import sys, contextlib, io\nimport ltpa.cli\nout = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n    ltpa.cli.main(['--help'])\n"
        "print('torch' in sys.modules)\nprint(out.getvalue())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, _, text = proc.stdout.partition("\n")
    assert loaded == "False"
    for name in ltpa.cli._COMMANDS:
        assert name in text
    full = ltpa.cli.build_parser()
    subparsers = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    helps = {action.dest: action.help for action in subparsers._choices_actions}
    assert helps == ltpa.cli._COMMANDS
