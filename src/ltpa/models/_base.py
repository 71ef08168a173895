"""What every ltpa model shares: the output contract, layer builders and the official initialisation.

Paper: "Learn To Pay Attention", https://arxiv.org/abs/1804.02391 (method §2 and §3.6 for the details).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import nn

from ltpa.attention import scale_grad
from ltpa.layers import Dropout
from ltpa.preprocess import build_preprocess

__all__ = ["AttentionOutput", "LTPAModel", "conv_bn_relu", "init_official", "scaled"]

CONV_BN_EPS = 1e-3  # Torch SpatialBatchNormalization(n, 1e-3) in the official code


class AttentionOutput(NamedTuple):
    """What ``model.forward_attention(x)`` returns.

    Attributes:
        logits: (B, K) class scores, equal to ``model(x)``.
        maps: one (B, H_s, W_s) attention map per attended level, shallowest first.
        descriptors: one (B, C_s) attention-pooled descriptor per level, same order.
    """

    logits: torch.Tensor
    maps: list[torch.Tensor]
    descriptors: list[torch.Tensor]


def scaled(channels: int, width: float) -> int:
    """A channel count times the width multiplier, at least 1."""
    return max(1, round(channels * width))


def conv_bn_relu(in_channels: int, out_channels: int, drop_rate: float = 0.0) -> nn.Sequential:
    """3x3 convolution (with bias, as in cifar.torch) + BatchNorm (eps 1e-3) + ReLU [+ Dropout]."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels, eps=CONV_BN_EPS),
        nn.ReLU(inplace=True),
    ]
    if drop_rate > 0:
        layers.append(Dropout(drop_rate))
    return nn.Sequential(*layers)


@torch.no_grad()
def init_official(module: nn.Module, *, zero_linear_bias: bool = False) -> None:
    """The official initialisation (method §3.6).

    Convolutions: ``N(0, sqrt(2 / (k*k*C_out)))`` ("MSR", Kaiming-normal fan-out), bias 0. Linear layers:
    Torch's default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weight and bias (bias 0 for the ResNets).
    BatchNorm: weight ``U(0, 1)``, bias 0.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            k_h, k_w = m.kernel_size
            m.weight.normal_(0.0, math.sqrt(2.0 / (k_h * k_w * m.out_channels)))
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.in_features)
            m.weight.uniform_(-bound, bound)
            if m.bias is not None:
                if zero_linear_bias:
                    m.bias.zero_()
                else:
                    m.bias.uniform_(-bound, bound)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            if m.weight is not None:
                m.weight.uniform_(0.0, 1.0)
            if m.bias is not None:
                m.bias.zero_()


class LTPAModel(nn.Module):
    """Base class of the model contract.

    * ``model(x)`` takes images in [0, 1], (B, 3, H, W), and returns logits (B, K); the input normalisation
      (``self.preprocess``) is part of the model.
    * ``model.forward_attention(x)`` returns :class:`AttentionOutput`.
    * ``model.forward_features(x)`` returns the input of the final linear classifier (B, F): the feature used
      for transfer (method §4.2).
    * ``model.attn_info``: one dict per attended level with ``name``, ``channels`` and ``stride`` (relative to
      the input), shallowest first, as timm's ``feature_info``.

    Subclasses implement ``_forward(x)`` on normalised input, returning ``(AttentionOutput, features)``.
    """

    num_classes: int
    img_size: int
    attn_info: list[dict[str, Any]]
    model_name: str  # set by create_model
    model_kwargs: dict[str, Any]  # set by create_model
    checkpoint: dict[str, Any]  # set by load_model: the sidecar
    run_name: str  # set by load_model: the run folder's name

    def __init__(self, *, num_classes: int, img_size: int, preprocess: str = "none") -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if img_size < 8:
            raise ValueError(f"img_size must be at least 8, got {img_size}")
        self.num_classes = num_classes
        self.img_size = img_size
        self.preprocess = build_preprocess(preprocess, img_size=img_size)
        self.attn_info = []
        self.grad_averaging = False

    def _branch(self, x: torch.Tensor, consumers: int) -> torch.Tensor:
        """Marks one of ``consumers`` uses of ``x``: with code-faithful gradient averaging on, the gradient
        arriving through this use is divided by ``consumers`` (method §3.3)."""
        return scale_grad(x, 1.0 / consumers) if self.grad_averaging else x

    def _forward(self, x: torch.Tensor) -> tuple[AttentionOutput, torch.Tensor]:
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")

    def forward_attention(self, x: torch.Tensor) -> AttentionOutput:
        """Logits, per-level attention maps and descriptors for images ``x`` in [0, 1].

        Shape:
            - x: (B, 3, H, W)
            - logits (B, K); maps[s] (B, H_s, W_s); descriptors[s] (B, C_s)
        """
        self._check_input(x)
        return self._forward(self.preprocess(x))[0]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the final linear layer (B, F) for images ``x`` in [0, 1]."""
        self._check_input(x)
        return self._forward(self.preprocess(x))[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self._forward(self.preprocess(x))[0].logits

    def get_classifier(self) -> nn.Module:
        """The final linear layer(s), which ``reset_classifier`` replaces."""
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        """Replaces the final linear layer(s) by fresh ones for ``num_classes`` classes (the CUB recipe
        initialises everything else from a CIFAR-100 model, method §2.3)."""
        raise NotImplementedError
