"""Opt-in downloads (``download=True`` / ``--download``) of the datasets with a public archive.

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391.

Nothing downloads unless asked; tests never do. Files are fetched with torchvision's helpers into the dataset
root and unpacked there, so the readers then find the publisher's layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ltpa.errors import LTPAError

__all__ = ["fetch"]


def fetch(name: str, root: Path, urls: Sequence[str], *, extract: bool) -> None:
    """Downloads ``urls`` into ``root`` (and unpacks archives when ``extract``).

    Raises:
        LTPAError: when a download fails, naming the URL.
    """
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    root.mkdir(parents=True, exist_ok=True)
    for url in urls:
        filename = url.rsplit("/", 1)[-1].split("?", 1)[0]
        try:
            if extract:
                download_and_extract_archive(url, download_root=str(root), filename=filename)
            else:
                download_url(url, str(root), filename=filename)
        except (OSError, RuntimeError, ValueError) as err:
            raise LTPAError(f"{name}: download of {url} into {root} failed ({err})") from err
