"""Opt-in downloads (``download=True`` / ``--download``) of the datasets with a public archive, verified and
unpacked safely.

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391.

Nothing downloads unless asked; tests never do. Each file is described by a :class:`Remote`: its name, its
mirrors (HTTPS first; a plain-HTTP mirror is only used for a file whose published checksum is known, so what
it serves is still verified) and, where the publisher gives one, its MD5 or SHA-256 sum. A file already in the
dataset root is checked against that sum before it is used, and a download is checked before it replaces
anything. Archives (``.tar``, ``.tar.gz``, ``.tgz``, ``.zip``) are unpacked only after every member has been
checked: members that would land outside the root (absolute paths, ``..``), links, devices and FIFOs are
refused and nothing is written.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ltpa.errors import LTPAError

__all__ = ["Remote", "fetch", "safe_extract", "verify_checksum"]


@dataclass(frozen=True)
class Remote:
    """One published file.

    Attributes:
        filename: the name it is saved under in the dataset root.
        urls: mirrors, tried in order (HTTPS first).
        md5: the publisher's MD5 sum (hex), when known.
        sha256: the publisher's SHA-256 sum (hex), when known.
    """

    filename: str
    urls: tuple[str, ...]
    md5: str | None = None
    sha256: str | None = None

    @property
    def checksum(self) -> tuple[str, str] | None:
        """``(algorithm, hex digest)`` to verify against (SHA-256 preferred), or None when unknown."""
        if self.sha256:
            return "sha256", self.sha256.lower()
        if self.md5:
            return "md5", self.md5.lower()
        return None


def _digest(path: Path, algorithm: str) -> str:
    hasher = hashlib.new(algorithm) if algorithm != "md5" else hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def verify_checksum(name: str, path: Path, remote: Remote, *, shown: str | None = None) -> None:
    """Checks ``path`` against ``remote``'s published sum (nothing to check when none is known).

    Raises:
        LTPAError: naming the file (``shown`` when given) when the sum differs.
    """
    checksum = remote.checksum
    if checksum is None:
        return
    algorithm, expected = checksum
    actual = _digest(path, algorithm)
    if actual != expected:
        raise LTPAError(
            f"{name}: {shown or path} does not match the published {algorithm} {expected} (got {actual}); "
            "it is truncated, corrupt or another file: delete it and download again"
        )


def _inside(root: Path, member: str) -> bool:
    if not member or PurePosixPath(member).is_absolute() or os.path.isabs(member):
        return False
    target = (root / member).resolve()
    return target == root or root in target.parents


def _check_tar(archive: Path, root: Path, members: list[tarfile.TarInfo]) -> None:
    for member in members:
        if not (member.isfile() or member.isdir()):
            kind = "link" if member.issym() or member.islnk() else "device, FIFO or special file"
            raise LTPAError(
                f"refusing to unpack {archive}: member {member.name!r} is a {kind}; "
                "delete the archive and download it from the publisher"
            )
        if not _inside(root, member.name):
            raise LTPAError(
                f"refusing to unpack {archive}: member {member.name!r} would be written outside {root}; "
                "delete the archive and download it from the publisher"
            )


def _check_zip(archive: Path, root: Path, infos: list[zipfile.ZipInfo]) -> None:
    for info in infos:
        kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver stored no Unix file type
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise LTPAError(
                f"refusing to unpack {archive}: member {info.filename!r} is a link or special file; "
                "delete the archive and download it from the publisher"
            )
        if "\\" in info.filename or not _inside(root, info.filename):
            raise LTPAError(
                f"refusing to unpack {archive}: member {info.filename!r} would be written outside {root}; "
                "delete the archive and download it from the publisher"
            )


def safe_extract(archive: Path, root: Path) -> None:
    """Unpacks a tar (any compression) or zip archive into ``root`` after checking every member.

    Raises:
        LTPAError: naming the archive when it is not a readable archive, or when a member is a link, a device
            or FIFO, or would land outside ``root``; nothing is written then.
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                infos = zipped.infolist()
                _check_zip(archive, root, infos)
                for info in infos:
                    zipped.extract(info, root)
            return
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            _check_tar(archive, root, members)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12: refuses the same, and more
                tar.extractall(root, members=members, filter="data")
            else:  # pragma: no cover - older Pythons; every member was checked above
                tar.extractall(root, members=members)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise LTPAError(
            f"cannot unpack {archive} ({type(err).__name__}: {err}); delete it and download it again"
        ) from err


def _is_archive(filename: str) -> bool:
    return filename.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip"))


def _download(name: str, remote: Remote, root: Path) -> Path:
    """Downloads ``remote`` to a temporary name in ``root``, verifies it, then moves it into place."""
    from torchvision.datasets.utils import download_url

    target = root / remote.filename
    partial = root / f".{remote.filename}.part"
    urls = [u for u in remote.urls if u.startswith("https://") or remote.checksum is not None]
    if not urls:
        raise LTPAError(
            f"{name}: no HTTPS mirror for {remote.filename} and no checksum to verify a plain-HTTP one; "
            f"download it yourself into {root}"
        )
    failures = []
    for url in urls:
        partial.unlink(missing_ok=True)  # download_url skips an existing file
        try:
            download_url(url, str(root), filename=partial.name)
        except (OSError, RuntimeError, ValueError) as err:
            failures.append(f"{url}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
            partial.unlink(missing_ok=True)
            continue
        try:
            verify_checksum(name, partial, remote, shown=f"the download of {url}")
        except LTPAError:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, target)
        return target
    raise LTPAError(f"{name}: download of {remote.filename} into {root} failed ({'; '.join(failures)})")


def fetch(name: str, root: Path, remotes: Sequence[Remote], *, extract: bool) -> None:
    """Makes sure every file of ``remotes`` is in ``root`` and matches its published sum, downloading the
    missing ones; with ``extract``, unpacks the archives safely into ``root``.

    Raises:
        LTPAError: naming the file when a file already there or a download does not match its sum, when a
            download fails (naming the URLs), or when an archive is unsafe or unreadable.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for remote in remotes:
        target = root / remote.filename
        if target.is_file():
            verify_checksum(name, target, remote)  # a pre-placed file is not trusted blindly
        else:
            _download(name, remote, root)
        if extract and _is_archive(remote.filename):
            safe_extract(target, root)
