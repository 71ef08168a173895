"""Decoding image and mask files for the lazy datasets (CUB, image folders, Object Discovery).

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391.

torchvision's decoders read JPEG, PNG, GIF and WebP straight into uint8 tensors; BMP and TIFF, which some image
collections contain, go through Pillow (a torchvision dependency).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, read_file

from ltpa.errors import LTPAError

__all__ = ["IMAGE_EXTENSIONS", "read_image", "read_mask"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
_PIL_EXTENSIONS = (".bmp", ".tif", ".tiff")


def _decode(path: Path, mode: ImageReadMode, pil_mode: str) -> torch.Tensor:
    if not path.is_file():
        raise LTPAError(f"missing image file: {path}")
    try:
        if path.suffix.lower() in _PIL_EXTENSIONS:
            from PIL import Image

            with Image.open(path) as pil:
                array = np.asarray(pil.convert(pil_mode))
            tensor = torch.from_numpy(array.copy())
            return tensor.permute(2, 0, 1) if tensor.dim() == 3 else tensor.unsqueeze(0)
        return decode_image(read_file(str(path)), mode=mode)
    except (RuntimeError, OSError, ValueError) as err:
        raise LTPAError(
            f"cannot decode image file {path} ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from err


def read_image(path: Path) -> torch.Tensor:
    """An image file as RGB (grey and CMYK converted, alpha dropped).

    Raises:
        LTPAError: naming the file when it is missing or cannot be decoded.

    Shape:
        - Output: (3, H, W) uint8.
    """
    return _decode(path, ImageReadMode.RGB, "RGB")


def read_mask(path: Path) -> torch.Tensor:
    """A ground-truth mask file (white object on black) as bool.

    Masks saved as 0/255 are thresholded at 127; masks saved as 0/1 grey values count every 1 as object.

    Shape:
        - Output: (H, W) bool.
    """
    grey = _decode(path, ImageReadMode.GRAY, "L")[0]  # (H, W) uint8
    return grey > (0 if int(grey.max()) <= 1 else 127)
