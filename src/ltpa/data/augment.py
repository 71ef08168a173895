"""Batched training augmentation on tensors, on any device (method §3.4).

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391.

The official VGG runs flip exactly half of every batch horizontally (cifar.torch's ``BatchFlip``); the ResNet
runs add a random 32x32 crop of the 4-pixel reflection-padded image, with one offset for the whole batch. Both work here on a whole (B, C, H, W)
batch at once, uint8 or float, with an optional ``torch.Generator`` for reproducibility; nothing goes through
PIL. :func:`resize` brings CUB and image-folder pictures to the network's input side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["random_crop", "random_flip", "resize"]


def _generator_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def _check_batch(images: torch.Tensor, what: str) -> None:
    if images.dim() != 4:
        raise ValueError(f"{what}: expected a (B, C, H, W) batch, got shape {tuple(images.shape)}")


def random_flip(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    mode: Literal["random", "half"] = "random",
) -> torch.Tensor:
    """Flips images left-right: each with probability 0.5, or exactly half of the batch (cifar.torch).

    Args:
        images: a batch, uint8 or float, on any device.
        generator: source of randomness (on CPU or on the images' device); None uses the global one.
        mode: ``"random"`` flips each image independently with p = 0.5; ``"half"`` flips a random subset of
            exactly ``B // 2`` images, as the official VGG training does.

    Returns:
        A new tensor with the flipped images.

    Shape:
        - Input: (B, C, H, W).
        - Output: (B, C, H, W).
    """
    _check_batch(images, "random_flip")
    b = images.shape[0]
    device = _generator_device(generator, images.device)
    if mode == "random":
        flip = torch.rand(b, generator=generator, device=device) < 0.5  # (B,)
    elif mode == "half":
        order = torch.randperm(b, generator=generator, device=device)
        flip = torch.zeros(b, dtype=torch.bool, device=device)
        flip[order[: b // 2]] = True
    else:
        raise ValueError(f"random_flip: mode must be 'random' or 'half', got {mode!r}")
    flip = flip.to(images.device).view(b, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Reflection (without repeating the edge, as ``F.pad(mode='reflect')``) of indices in [-size+1, 2*size-2]."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def random_crop(
    images: torch.Tensor,
    padding: int = 4,
    generator: torch.Generator | None = None,
    *,
    size: int | Sequence[int] | None = None,
    per: Literal["image", "batch"] = "image",
) -> torch.Tensor:
    """Random crops of the reflection-padded images, one offset per image or one for the whole batch.

    Equivalent to ``F.pad(images, [padding] * 4, mode="reflect")`` followed by a crop at a uniform random
    offset, but done with one gather, for any dtype and device.

    Args:
        images: a batch, uint8 or float.
        padding: pixels of reflection padding on each side; must be smaller than H and W.
        generator: source of randomness; None uses the global one.
        size: crop side (or (H, W)); default the input size.
        per: ``"image"`` draws an offset per image; ``"batch"`` draws one offset for the whole batch, as the
            official ResNet code's crop module does (docs/fidelity.md row 1).

    Returns:
        The cropped batch.

    Shape:
        - Input: (B, C, H, W).
        - Output: (B, C, H', W') with (H', W') = ``size`` or (H, W).
    """
    _check_batch(images, "random_crop")
    b, c, h, w = images.shape
    if padding < 0 or padding >= min(h, w):
        raise ValueError(
            f"random_crop: padding must be in [0, {min(h, w) - 1}] for {h}x{w} images, got {padding}"
        )
    out_h, out_w = (
        (size, size) if isinstance(size, int) else (h, w) if size is None else (int(size[0]), int(size[1]))
    )
    if not (0 < out_h <= h + 2 * padding and 0 < out_w <= w + 2 * padding):
        raise ValueError(f"random_crop: crop {out_h}x{out_w} does not fit in the padded {h}x{w} images")
    if per not in ("image", "batch"):
        raise ValueError(f"random_crop: per must be 'image' or 'batch', got {per!r}")
    device = _generator_device(generator, images.device)
    draws = b if per == "image" else 1
    top = torch.randint(0, h + 2 * padding - out_h + 1, (draws,), generator=generator, device=device)
    left = torch.randint(0, w + 2 * padding - out_w + 1, (draws,), generator=generator, device=device)
    top, left = top.expand(b), left.expand(b)
    top, left = top.to(images.device), left.to(images.device)
    rows = _reflect(top[:, None] - padding + torch.arange(out_h, device=images.device), h)  # (B, H')
    cols = _reflect(left[:, None] - padding + torch.arange(out_w, device=images.device), w)  # (B, W')
    batch = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    channel = torch.arange(c, device=images.device).view(1, c, 1, 1)
    return images[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def resize(images: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Resizes images bilinearly with antialiasing (or masks by nearest neighbour), keeping the dtype.

    uint8 input is rounded back to uint8; bool input (masks) is resized by nearest neighbour.

    Args:
        images: an image (C, H, W), a batch (B, C, H, W), or masks (H, W) / (B, H, W) of dtype bool.
        size: output side, or (height, width).

    Returns:
        The resized tensor, same dtype and device.

    Shape:
        - Input: (..., H, W).
        - Output: (..., H', W').
    """
    out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if images.dim() < 2:
        raise ValueError(f"resize: expected at least (H, W), got shape {tuple(images.shape)}")
    if tuple(images.shape[-2:]) == (out_h, out_w):
        return images
    lead = images.shape[:-2]
    flat = images.reshape(-1, 1, *images.shape[-2:])  # (N, 1, H, W)
    if images.dtype == torch.bool:
        out = F.interpolate(flat.float(), size=(out_h, out_w), mode="nearest-exact") > 0.5
    else:
        x = flat if images.dtype.is_floating_point else flat.float()
        out = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True)
        if images.dtype == torch.uint8:
            out = out.round_().clamp_(0, 255).to(torch.uint8)
        elif not images.dtype.is_floating_point:
            out = out.round_().to(images.dtype)
    return out.reshape(*lead, out_h, out_w)
