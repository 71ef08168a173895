"""Decoding image and mask files for the lazy datasets (CUB, image folders, Object Discovery).

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391.

Every file goes through Pillow, defensively:

- the size is read from the header (``Image.open`` is lazy) and a file of more than :data:`MAX_IMAGE_PIXELS`
  pixels is refused before any pixel is decoded, so a forged header cannot make the process allocate
  gigabytes;
- the pixels are then decoded in full inside the same ``try``, so a truncated or corrupt file is an
  :class:`~ltpa.errors.LTPAError` naming the file, never a crash in a native decoder or a half-black image.
  Pillow accepts a PNG whose compressed data ends early (it leaves the missing rows black), so the amount of
  PNG image data is counted against the header first;
- modes are converted explicitly: 16-bit and 32-bit integer grey (``I;16*``, ``I``) is scaled to 8 bits,
  float grey (``F``) clipped to 0..255, palette, bilevel, CMYK, YCbCr and grey-alpha go to RGB, alpha is
  dropped; of an animation (GIF, APNG, WebP) only the first frame is read.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltpa.errors import LTPAError

__all__ = ["IMAGE_EXTENSIONS", "MAX_IMAGE_PIXELS", "open_image", "read_image", "read_mask"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
# 64 megapixels (8192 x 8192): far above any image of the datasets read here, far below what a forged header
# can claim (65,500 x 65,500 would be 13 GB of RGB).
MAX_IMAGE_PIXELS = 8192 * 8192

_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_FIX = "replace or delete the file"


def _decode_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    # UnidentifiedImageError is an OSError; plugins also raise SyntaxError, struct.error, EOFError or
    # zlib.error on malformed data, and Image.open raises DecompressionBombError above twice its own limit.
    return (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        struct.error,
        zlib.error,
        Image.DecompressionBombError,
    )


@contextlib.contextmanager
def open_image(path: Path, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Iterator[Any]:
    """The first frame of an image file as a fully decoded ``PIL.Image``, size-checked before decoding.

    Raises:
        LTPAError: one line naming the file when it is missing, not an image, larger than ``max_pixels``,
            truncated or corrupt.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise LTPAError(f"missing image file: {path}")
    errors = _decode_errors()
    with contextlib.ExitStack() as stack:
        try:
            image = stack.enter_context(Image.open(path))  # reads the header only
        except errors as err:
            raise _decode_error(path, err) from err
        width, height = image.size
        if width < 1 or height < 1 or width * height > max_pixels:
            raise _size_error(path, f"{width}x{height} pixels", max_pixels)
        if image.format == "PNG":
            problem = _png_shortfall(path, max_pixels)
            if problem is not None:
                raise LTPAError(f"cannot decode image file {path} ({problem}): truncated or corrupt; {_FIX}")
        try:
            image.seek(0)  # the first frame of an animation
            image.load()  # decodes every pixel now, so truncation is caught here
        except errors as err:
            raise _decode_error(path, err) from err
        yield image


# PNG colour type -> samples per pixel
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: (x start, y start, x step, y step)
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_expected_bytes(width: int, height: int, depth: int, colour: int, interlaced: bool) -> int:
    """Bytes of filtered scanlines the header promises (one filter byte per row of each pass)."""
    bits = depth * _PNG_CHANNELS[colour]
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if w > 0 and h > 0:
            total += h * (1 + (w * bits + 7) // 8)
    return total


def _png_shortfall(path: Path, max_pixels: int) -> str | None:
    """Why the IDAT data of a PNG file holds fewer scanline bytes than its header promises, or None.

    Only the first image of the file (the default image of an APNG) is counted; the inflated data is
    discarded as it is produced, so this needs no more memory than one block.
    """
    data = path.read_bytes()
    if len(data) < 33 or data[12:16] != b"IHDR":
        return "no PNG header"
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if colour not in _PNG_CHANNELS or width * height > max_pixels:
        return None  # Pillow reports these itself
    expected = _png_expected_bytes(width, height, depth, colour, interlace == 1)
    inflater = zlib.decompressobj()
    produced, offset, seen_idat = 0, 8, False
    try:
        while offset + 8 <= len(data) and produced < expected:
            length, kind = struct.unpack(">I4s", data[offset : offset + 8])
            body = data[offset + 8 : offset + 8 + length]
            offset += 12 + length
            if kind == b"IDAT":
                seen_idat = True
                while body and produced < expected:
                    produced += len(inflater.decompress(body, 1 << 20))
                    body = inflater.unconsumed_tail
            elif seen_idat or kind == b"IEND":
                break  # the image data is over
    except zlib.error as err:
        return f"corrupt compressed data: {err}"
    if produced < expected:
        return f"image data ends early: {produced} of {expected} bytes for {width}x{height}"
    return None


def _size_error(path: Path, size: str, max_pixels: int) -> LTPAError:
    return LTPAError(
        f"image file {path} declares {size}, over the limit of {max_pixels} pixels (or empty); "
        f"{_FIX}, or downscale it"
    )


def _decode_error(path: Path, err: BaseException) -> LTPAError:
    from PIL import Image

    if isinstance(err, Image.DecompressionBombError):  # Pillow's own, higher limit, checked in Image.open
        return _size_error(path, "too many pixels", MAX_IMAGE_PIXELS)
    lines = str(err).splitlines()
    detail = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return LTPAError(
        f"cannot decode image file {path} ({detail}): truncated, corrupt or not an image; {_FIX}"
    )


def _high_bit_to_uint8(image: Any) -> np.ndarray:
    """16-bit (or 32-bit integer) grey as uint8: the 0..65535 range scaled to 0..255."""
    array = np.asarray(image).astype(np.int64)
    return ((np.clip(array, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)


def _rgb_array(path: Path, image: Any) -> np.ndarray:
    mode = image.mode
    if mode in _HIGH_BIT_MODES:
        grey = _high_bit_to_uint8(image)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        image = image.convert("L")  # clips to 0..255
    elif mode in ("P", "PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")  # palette transparency and premultiplied alpha resolved first
    try:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except ValueError as err:
        raise LTPAError(f"image file {path} has mode {mode!r}, which cannot be read as RGB; {_FIX}") from err
    return rgb


def read_image(path: Path) -> torch.Tensor:
    """An image file as 8-bit RGB (see the module docstring for the conversions).

    Raises:
        LTPAError: naming the file when it is missing, too large, truncated or cannot be decoded.

    Shape:
        - Output: (3, H, W) uint8.
    """
    with open_image(path) as image:
        array = _rgb_array(Path(path), image)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def read_mask(path: Path) -> torch.Tensor:
    """A ground-truth mask file (white object on black) as bool.

    Masks saved as 0/255 are thresholded at half their range (127 for 8 bits, 32767 for 16 bits); masks saved
    as 0/1 grey values count every 1 as object.

    Shape:
        - Output: (H, W) bool.
    """
    with open_image(path) as image:
        if image.mode in _HIGH_BIT_MODES:
            grey = np.asarray(image).astype(np.int64)
            half = 32767 if int(grey.max(initial=0)) > 255 else 127
        else:
            if image.mode in ("P", "PA", "LA", "La"):
                image = image.convert("RGBA")
            try:
                grey = np.asarray(image.convert("L"), dtype=np.int64)
            except ValueError as err:
                raise LTPAError(
                    f"mask file {path} has mode {image.mode!r}, which cannot be read as grey; {_FIX}"
                ) from err
            half = 127
    threshold = 0 if int(grey.max(initial=0)) <= 1 else half
    return torch.from_numpy(grey > threshold)
