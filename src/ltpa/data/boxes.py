"""Bounding boxes from ground-truth masks and back, for scoring attention against object positions (method §4.3).

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391.

Boxes are ``(x0, y0, x1, y1)`` in pixels with exclusive ends, so ``mask[y0:y1, x0:x1]`` is the box and its area
is ``(x1 - x0) * (y1 - y0)``; an empty mask gives the empty box ``(0, 0, 0, 0)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["box_masks", "boxes_from_masks"]


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """The tight box around each mask's True pixels.

    Args:
        masks: bool masks, (N, H, W) or a single (H, W).

    Returns:
        int64 boxes ``(x0, y0, x1, y1)``, ends exclusive; zeros for empty masks.

    Shape:
        - Input: (N, H, W) or (H, W).
        - Output: (N, 4) or (4,).
    """
    single = masks.dim() == 2
    m = masks.unsqueeze(0) if single else masks
    if m.dim() != 3:
        raise ValueError(f"boxes_from_masks: expected (N, H, W) masks, got shape {tuple(masks.shape)}")
    m = m.bool()
    _, h, w = m.shape
    rows, cols = m.any(dim=2), m.any(dim=1)  # (N, H), (N, W)
    y0 = rows.int().argmax(dim=1)
    y1 = h - rows.flip(1).int().argmax(dim=1)
    x0 = cols.int().argmax(dim=1)
    x1 = w - cols.flip(1).int().argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).long()  # (N, 4)
    boxes[~rows.any(dim=1)] = 0
    return boxes[0] if single else boxes


def box_masks(boxes: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Masks that are True inside each box.

    Args:
        boxes: ``(x0, y0, x1, y1)`` boxes with exclusive ends, (N, 4) or (4,).
        size: mask side, or (H, W).

    Returns:
        bool masks.

    Shape:
        - Input: (N, 4) or (4,).
        - Output: (N, H, W) or (H, W).
    """
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    single = boxes.dim() == 1
    b = boxes.view(-1, 4)
    ys = torch.arange(h, device=b.device).view(1, h, 1)
    xs = torch.arange(w, device=b.device).view(1, 1, w)
    x0, y0, x1, y1 = (b[:, i].view(-1, 1, 1) for i in range(4))
    masks = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)  # (N, H, W)
    return masks[0] if single else masks
