"""Small helpers shared across ltpa's packages: file writing, image and map conversions, names.

Every package imports these from here; none keeps its own copy.
"""

from __future__ import annotations

import difflib
import errno
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "NoFollowFileHandler",
    "atomic_write",
    "configure_logging",
    "did_you_mean",
    "json_safe",
    "log",
    "normalize_minmax",
    "open_no_follow",
    "safe_filename",
    "to_unit_float",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> None:
    """Calls ``write(tmp_path)`` then renames the temporary file over ``path``: a crash midway never leaves
    a broken ``path`` (the previous version stays). Errors name ``path``, never the temporary file.

    Never writes through a symbolic link: the temporary file is a new one (``O_EXCL``), and the rename
    replaces a link planted at ``path`` by the file, leaving whatever it pointed to untouched. ``write``
    must write to ``tmp_path`` under that name (it ends in ``.tmp``: give writers that guess the format from
    the suffix the format explicitly).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:  # name the user's folder, not the temporary file
        raise OSError(err.errno, err.strerror, str(path.parent)) from err
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates the file 0600 (and some writers, safetensors among them, replace it with another
        # 0600 file): give the result the mode a plain open() would have, 0666 less the umask
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename == tmp:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def open_no_follow(path: str | os.PathLike[str], flags: int, mode: int = 0o666) -> int:
    """``os.open(path, flags | O_NOFOLLOW)``: a file descriptor for ``path`` that is never a symbolic link's
    target, for the files ltpa opens in place (lock files, logs, write tests) rather than through
    :func:`atomic_write`. A link planted at ``path`` would otherwise let ltpa truncate or append to any file
    the user (or root) can write.

    Raises:
        LTPAError: ``path`` is a symbolic link (the link is left alone: remove it).
        OSError: any other failure to open.
    """
    from ltpa.errors import LTPAError

    path = os.fspath(path)
    try:
        if not _NOFOLLOW and os.path.islink(path):  # a system without O_NOFOLLOW: check first
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        return os.open(path, flags | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as err:
        if err.errno == errno.ELOOP or (err.errno == errno.EMLINK and os.path.islink(path)):  # EMLINK: BSDs
            raise LTPAError(
                f"{path} is a symbolic link; ltpa never writes through links (it could overwrite the file "
                "the link points to): remove the link, or choose another output folder"
            ) from err
        raise


class NoFollowFileHandler(logging.FileHandler):
    """A ``logging.FileHandler`` that opens its file with :func:`open_no_follow`: a log file in a user's
    folder (e.g. a study's ``study.log``) never appends to what a symbolic link planted there points to."""

    def _open(self):  # type: ignore[no-untyped-def]
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in self.mode else os.O_TRUNC)
        fd = open_no_follow(self.baseFilename, flags)
        return os.fdopen(fd, self.mode, encoding=self.encoding, errors=self.errors)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) as float32 in [0, 1]; float images as float32, unchanged in value."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def normalize_minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max scaling of (B, H, W) maps to [0, 1].

    A constant map carries no preference among positions: it becomes all ones, so that it binarises to the
    whole image at any threshold in [0, 1] (the uniform-map baseline).
    """
    flat = maps.float().flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - lo
    constant = span <= 0
    out = torch.where(constant, torch.ones_like(flat), (flat - lo) / torch.where(constant, 1.0, span))
    return out.view_as(maps)


def did_you_mean(name: str, choices: Iterable[str], *, n: int = 4, cutoff: float = 0.5) -> str:
    """``"did you mean a, b?"`` for the choices close to ``name``, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=cutoff)
    return f"did you mean {', '.join(close)}?" if close else ""


def safe_filename(name: str) -> str:
    """A name usable as part of a file name (letters, digits, ``-_.``; anything else becomes ``_``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def json_safe(value: Any) -> Any:
    """``value`` made JSON-safe: dict keys as strings, tuples as lists, paths as strings, tensors as lists,
    and non-finite floats as ``None`` (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ------------------------------------------------------------------------------------------------ logging

log = logging.getLogger("ltpa")  # every message of the library; the `ltpa` command line shows them on stderr


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each message (pytest and notebooks replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(verbosity: int = 0) -> None:
    """Shows the ``ltpa`` logger's messages on stderr, as plain lines: ``verbosity`` -1 warnings only
    (``--quiet``), 0 progress and results, 1 debug details (``-v``). Called by the command line; Python users
    call it (or configure ``logging`` themselves) to see training progress."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(
        verbosity, logging.DEBUG if verbosity > 0 else logging.WARNING
    )
    for handler in [h for h in log.handlers if isinstance(h, _CurrentStderr)]:
        log.removeHandler(handler)
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
