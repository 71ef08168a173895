"""The ``ltpa`` command line: thin subcommands over the Python API.

Each subcommand lives in ``ltpa.commands.<name>`` as a pair ``add_<name>_parser(subparsers)`` and
``<name>_command(args)``; ``main(argv=None)`` lets tests pass an argument list.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from ltpa import __version__
from ltpa.errors import LTPAError

__all__ = ["main"]

# Subcommands, in the order `ltpa --help` lists them.
_COMMANDS: tuple[str, ...] = (
    "models",
    "data",
    "train",
    "demo",
    "export",
    "eval",
    "visualize",
    "attack",
    "segment",
    "localize",
    "transfer",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltpa",
        allow_abbrev=False,
        description="Learn To Pay Attention (Jetley et al., ICLR 2018): models, training and experiments.",
    )
    parser.add_argument("--version", action="version", version=f"ltpa {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS:
        module = importlib.import_module(f"ltpa.commands.{name}")
        getattr(module, f"add_{name}_parser")(subparsers)
    for sub in subparsers.choices.values():
        sub.allow_abbrev = False  # `--epoch` must not stand for `--epochs`: a typo is an error, never a guess
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``ltpa`` with ``argv`` (default: ``sys.argv[1:]``) and returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except (LTPAError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError) as err:
        if os.environ.get("LTPA_DEBUG"):
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"ltpa {args.command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `ltpa models | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"ltpa {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)
