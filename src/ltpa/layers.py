"""Small layers shared by the attention module and the models, chosen for speed where PyTorch's are slow.

``Dropout`` is the paper's dropout (inverted: kept units scaled by ``1/(1-p)``) with a cheaper random mask on
the CPU. PyTorch's CPU ``bernoulli_`` draws each element with its own floating-point comparison; at the
widths a CPU trains (width 1/8 of the paper's VGG) that made dropout a third of a training step
(docs/benchmarks.md). Here the mask comes from 15-bit random integers compared with ``p * 2**15``: the same
distribution up to rounding ``p`` to a multiple of ``2**-15``, at several times the speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Dropout", "dropout"]

_MASK_LEVELS = 1 << 15  # masks compare 15-bit uniform integers with p * 2**15


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout of ``x`` with drop probability ``p``; the identity when not ``training`` or ``p == 0``.

    On the CPU the mask is drawn from 15-bit integers (see the module docstring); the drop probability used is
    ``round(p * 2**15) / 2**15`` and kept units are scaled by the exact inverse of its complement, so the
    expectation of the output equals ``x``. On other devices this is ``torch.nn.functional.dropout``. The
    mask follows the global torch generator, so ``torch.manual_seed`` makes it reproducible.

    Shape:
        any; the mask has ``x``'s shape and memory format.
    """
    if not training or p == 0.0:
        return x
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if x.device.type != "cpu" or p == 1.0 or torch.compiler.is_compiling():
        return F.dropout(x, p, training=True)  # (compiled code draws its own fused mask)
    threshold = round(p * _MASK_LEVELS)
    if threshold == 0:
        return x
    mask = _uniform15(x).ge_(threshold).to(x.dtype).mul_(_MASK_LEVELS / (_MASK_LEVELS - threshold))
    return x * mask


def _uniform15(x: torch.Tensor) -> torch.Tensor:
    """Independent uniform integers in [0, 2**15), one per element of ``x``, in ``x``'s memory layout (int16).

    One 64-bit draw gives four: its three low 16-bit lanes are uniform over all 16 bits and its top lane over
    15, so each lane is masked to 15 bits. That is 4x fewer generator calls than ``int16.random_()``.
    """
    n = x.numel()
    dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
    if not dense:  # e.g. a strided view: draw per element, in x's layout
        return torch.empty_like(x, dtype=torch.int16).random_()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()
    lanes = words.view(torch.int16)[:n].bitwise_and_(_MASK_LEVELS - 1)
    return lanes.as_strided(x.shape, x.stride())


class Dropout(nn.Dropout):
    """``nn.Dropout`` with the fast CPU mask of :func:`dropout`; same arguments, state and ``repr``.

    ``inplace`` is accepted for compatibility and ignored on the CPU (autograd keeps the mask, not the input).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
