"""The command line's own options: -v and --quiet before or after the command name."""

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
