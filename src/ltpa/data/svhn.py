"""SVHN (Street View House Numbers), cropped-digit format ``*_32x32.mat`` (method §3.4, §6.8).

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391.

Layout (http://ufldl.stanford.edu/housenumbers/, "Format 2")::

    <root>/{train_32x32.mat, test_32x32.mat, extra_32x32.mat}

Each file holds ``X`` (32, 32, 3, N) uint8 and ``y`` (N, 1) with labels 1..10, where 10 stands for the digit 0.
Whether the paper trained on train (73,257) or train+extra (604,388) is unknown (method §3.4); train alone is the
default and ``include_extra=True`` adds extra.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import scipy.io
import torch

from ltpa.data._base import TensorImageDataset, data_error, find_data_dir
from ltpa.data._download import Remote, fetch

__all__ = ["SVHN_CLASSES", "build_svhn", "probe_svhn", "read_svhn_mat"]

SVHN_CLASSES = [str(d) for d in range(10)]
SVHN_SOURCE = "http://ufldl.stanford.edu/housenumbers/ (Format 2: cropped digits), or download=True (ltpa data --download)"
SVHN_LAYOUT = "<root>/{train,test,extra}_32x32.mat with X (32,32,3,N) uint8 and y (N,1) in 1..10"
# the publisher's MD5 sums of the three files
_MD5 = {
    "train": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test": "eb5a983be6a315427106f1b164d9cef3",
    "extra": "a93ce644f1a588dc4d68dda5feec44a7",
}
_SUBDIRS = ("", "svhn", "SVHN")


def read_svhn_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels (10 mapped to 0) of one ``*_32x32.mat`` file.

    Raises:
        LTPAError: naming the file when it is missing, truncated or has other contents.

    Shape:
        - images: (N, 3, 32, 32) uint8.
        - labels: (N,) int64 in 0..9.
    """
    name, layout, source = "svhn", SVHN_LAYOUT, SVHN_SOURCE
    if not path.is_file():
        raise data_error(name, "missing file", path, layout, source)
    try:
        content = scipy.io.loadmat(str(path), variable_names=["X", "y"])
    except (ValueError, OSError, TypeError, EOFError, zlib.error, scipy.io.matlab.MatReadError) as err:
        raise data_error(name, f"truncated or not a MATLAB file ({err})", path, layout, source) from err
    if "X" not in content or "y" not in content:
        raise data_error(name, "no X or y variable", path, layout, source)
    x, y = np.asarray(content["X"]), np.asarray(content["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8 or y.shape != (x.shape[3],):
        raise data_error(
            name, f"wrong contents (X {x.dtype} {x.shape}, {y.shape[0]} labels)", path, layout, source
        )
    labels = y.astype(np.int64)
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise data_error(name, "labels outside 1..10", path, layout, source)
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))  # (N, 3, H, W)
    return images, torch.from_numpy(labels % 10)


def _remote(split: str) -> Remote:
    filename = f"{split}_32x32.mat"
    urls = tuple(f"{scheme}://ufldl.stanford.edu/housenumbers/{filename}" for scheme in ("https", "http"))
    return Remote(filename, urls, md5=_MD5.get(split))


def probe_svhn(candidates: list[Path]) -> Path | None:
    """The folder holding ``train_32x32.mat`` among ``candidates``, or None."""
    return find_data_dir(candidates, _SUBDIRS, "train_32x32.mat")


def build_svhn(
    candidates: list[Path], split: str, *, include_extra: bool = False, download: bool = False
) -> TensorImageDataset:
    """SVHN digits: train 73,257, test 26,032, extra 531,131 images of 32x32.

    Args:
        candidates: folders to look in, in order.
        split: ``"train"``, ``"test"`` or ``"extra"``.
        include_extra: with ``split="train"``, append the extra set (604,388 images in all).
        download: fetch the missing ``.mat`` files into the first candidate.
    """
    splits = [split, "extra"] if include_extra and split == "train" else [split]
    files = [f"{s}_32x32.mat" for s in splits]
    folder = find_data_dir(candidates, _SUBDIRS, files[0])
    if download and (folder is None or not all((folder / f).is_file() for f in files)):
        target = folder if folder is not None else candidates[0]
        fetch(
            "svhn",
            target,
            [_remote(s) for s in splits],
            extract=False,
        )
        folder = target
    if folder is None:
        raise data_error("svhn", "missing file", candidates[0] / files[0], SVHN_LAYOUT, SVHN_SOURCE)
    parts = [read_svhn_mat(folder / f) for f in files]
    images = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return TensorImageDataset(images, labels, SVHN_CLASSES, name="svhn", split=split, root=folder)
