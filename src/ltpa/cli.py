"""The ``ltpa`` command line: thin subcommands over the Python API.

Each subcommand lives in ``ltpa.commands.<name>`` as a pair ``add_<name>_parser(subparsers)`` and
``<name>_command(args)``; ``main(argv=None)`` lets tests pass an argument list.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence

from ltpa import __version__
from ltpa.errors import LTPAError

__all__ = ["main"]

# Subcommands, in the order `ltpa --help` lists them, with the one line it shows for each (the same line each
# command's own module gives its parser: tests/test_cli.py checks that they agree).
_COMMANDS: dict[str, str] = {
    "models": "list the models with parameter counts and attended levels",
    "data": "list datasets and where they are; counts and a sample grid for one",
    "train": "train a model (any model and dataset, or a paper preset)",
    "demo": "train baseline and attention VGG on cluttered digits and write a report (CPU, minutes)",
    "export": "export a checkpoint to ONNX, TorchScript or a shareable weights folder",
    "eval": "accuracy, per-class accuracy and confusion matrix of checkpoints",
    "visualize": "attention maps overlaid on images (with CAM / Grad-CAM beside them)",
    "predict": "top-k classes of image files, with the model's maps over each",
    "attack": "accuracy and fooling rate under FGSM / PGD per epsilon",
    "segment": "Jaccard index of binarised attention maps against ground-truth masks",
    "localize": "attention mass inside the object's box and mask, pointing game",
    "transfer": "linear classifier on frozen features of unseen datasets",
    "report": "one self-contained HTML page per run: curves, maps, confusion matrix, FGSM sweep",
}


def _command_in(argv: Sequence[str] | None) -> str | None:
    """The subcommand named on the command line (the first word that is one), or None."""
    for word in argv or ():
        if word in _COMMANDS:
            return word
        if not word.startswith("-"):
            return None
    return None


def build_parser(argv: Sequence[str] | None = None, *, full: bool = True) -> argparse.ArgumentParser:
    """The ``ltpa`` parser. With ``full=False`` only the subcommand named in ``argv`` is imported (the others
    are listed by name and summary): the subcommands import PyTorch, which ``ltpa --help`` does not need."""
    parser = argparse.ArgumentParser(
        prog="ltpa",
        allow_abbrev=False,
        description="Learn To Pay Attention (Jetley et al., ICLR 2018): models, training and experiments.",
    )
    parser.add_argument("--version", action="version", version=f"ltpa {__version__}")
    _add_verbosity(parser, quiet_dest="quiet_before")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = None if full else _command_in(argv)
    for name, summary in _COMMANDS.items():
        if full or name == wanted:
            module = importlib.import_module(f"ltpa.commands.{name}")
            getattr(module, f"add_{name}_parser")(subparsers)
        else:
            subparsers.add_parser(name, help=summary, add_help=False)
    for sub in subparsers.choices.values():
        sub.allow_abbrev = False  # `--epoch` must not stand for `--epochs`: a typo is an error, never a guess
        _add_verbosity(sub)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, quiet_dest: str = "quiet") -> None:
    """``-v`` and ``--quiet``, accepted before the command name and after it (``ltpa -v train``, ``ltpa train
    -v``). Defaults are suppressed, and the main parser's ``--quiet`` has a name of its own, so that a
    subcommand's parser (whose own ``--quiet`` has a default) never resets what the main one read."""
    options = {opt for action in parser._actions for opt in action.option_strings}
    group = parser.add_argument_group("output")
    group.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="also show debug messages"
    )
    if "--quiet" not in options:
        group.add_argument(
            "-q",
            "--quiet",
            dest=quiet_dest,
            action="store_true",
            default=argparse.SUPPRESS,
            help="warnings and errors only",
        )
    elif "-q" not in options:
        group.add_argument(
            "-q", dest="quiet", action="store_true", default=argparse.SUPPRESS, help="as --quiet"
        )


# What to do about an operating-system error on a path the user gave, by errno.
_OS_HINTS = {
    errno.ENOTDIR: "a file stands where a folder is needed; choose another --out",
    errno.EEXIST: "a file stands where a folder is needed; choose another --out",
    errno.EISDIR: "a folder stands where a file is needed; choose another path",
    errno.EACCES: "no permission; choose another --out or change the permissions",
    errno.EPERM: "not permitted; choose another --out or change the permissions",
    errno.EROFS: "the file system is read-only; choose another --out",
    errno.ENOSPC: "the disk is full; free space or choose another --out",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
}


def os_error_message(err: OSError) -> str:
    """One line for an ``OSError``: what failed, on which path, and what to do."""
    where = f" {err.filename}" if err.filename else ""
    what = err.strerror or type(err).__name__
    hint = _OS_HINTS.get(err.errno or 0)
    return f"cannot use{where}: {what}" + (f" ({hint})" if hint else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``ltpa`` with ``argv`` (default: ``sys.argv[1:]``) and returns the exit status."""
    command = "command"
    try:
        words = list(sys.argv[1:] if argv is None else argv)
        # imports the named subcommand (and so PyTorch): Ctrl-C may arrive here
        parser = build_parser(words, full=False)
        args = parser.parse_args(words)
        command = args.command
        from ltpa.utils import configure_logging

        if getattr(args, "quiet_before", False):
            args.quiet = True  # `ltpa --quiet CMD`: as `ltpa CMD --quiet`
        if getattr(args, "verbose", False) and getattr(args, "quiet", False):
            raise LTPAError("-v and --quiet contradict each other; give one of them")
        configure_logging(
            1 if getattr(args, "verbose", False) else -1 if getattr(args, "quiet", False) else 0
        )
        status = args.func(args)
    except (LTPAError, ValueError) as err:
        if os.environ.get("LTPA_DEBUG"):
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"ltpa {command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `ltpa models | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:
        if os.environ.get("LTPA_DEBUG"):
            raise
        print(f"ltpa {command}: error: {os_error_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ltpa {command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)
