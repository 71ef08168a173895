"""Writes docs/results.md, its CSVs and figures from the committed records alone (the ``report`` stage)."""

from __future__ import annotations

import logging
import platform
import subprocess
from pathlib import Path

__all__ = ["machine", "source_commit"]

log = logging.getLogger("ltpa.study")


def source_commit() -> str:
    """The checkout's commit, marked ``+dirty`` when tracked files differ from it."""
    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+dirty" if dirty else "")


def machine() -> str:
    """CPU model, cores, native bf16 and the torch version, for the report's provenance."""
    import os

    import torch

    from ltpa.system import cpu_bf16_support

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    bf16 = "native bf16" if cpu_bf16_support() else "no native bf16"
    return f"{model}, {os.cpu_count()} cores ({bf16}), torch {torch.__version__}"
