"""Pre-activation ResNet-164 and RN-att2 of "Learn To Pay Attention" (method §2.4, §2.5).

Paper: https://arxiv.org/abs/1804.02391. Backbone: He et al. 2016, "Identity Mappings in Deep Residual
Networks" (bottleneck units, depth 9n+2 with n = 18).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from ltpa.layers import Dropout
from ltpa.models._base import CONV_BN_EPS, AttentionOutput, init_official, scaled
from ltpa.models._head import AttentionModel

__all__ = ["PreActBottleneck", "PreActResNet"]


class PreActBottleneck(nn.Module):
    """BN-ReLU-Conv1x1(stride) - BN-ReLU-Conv3x3 - BN-ReLU-Conv1x1, plus the shortcut.

    When the shape changes, the first BN-ReLU is shared by the residual branch and a 1x1 strided
    convolution shortcut; otherwise the shortcut is the identity. No convolution has a bias.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        inner = max(1, out_channels // 4)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, inner, 1, stride=stride, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, out_channels, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        short = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + short


def _stage(in_ch: int, out_ch: int, units: int, stride: int) -> nn.Sequential:
    layers = [PreActBottleneck(in_ch, out_ch, stride)]
    layers += [PreActBottleneck(out_ch, out_ch) for _ in range(units - 1)]
    return nn.Sequential(*layers)


class PreActResNet(AttentionModel):
    """Pre-activation bottleneck ResNet (depth 9n+2), with or without RN-att2 attention.

    Without attention (``attention_levels=()``): BN-ReLU-global average pool-Linear, the RN-164 baseline.
    With attention on stages 2 and 3 (RN-att2, method §2.4): the taps are the raw residual sums; the global
    feature g comes from stage 3 through BN-ReLU-pool-Conv-BN-ReLU-Dropout-pool-Dropout-Linear; each level's
    descriptor passes BN1d-ReLU-Dropout(0.3) before the classifier.

    Args:
        num_classes: K.
        img_size: input side.
        depth: 9n+2 (164 gives n = 18 units per stage).
        attention_levels: stages to attend, a subset of (1, 2, 3); () for the baseline.
        compatibility, normalization, combine, indep_mode, match: as in :class:`ltpa.models.vgg.AttnVGG`.
        width: channel multiplier.
        drop_scale: multiplies every dropout probability.
        grad_averaging: the official code's gradient averaging at branch points (method §3.3).
        preprocess: input normalisation preset.

    Shape:
        - input: (B, 3, img_size, img_size) in [0, 1]; output: (B, num_classes).
    """

    gradcam_level = "stage3"

    def __init__(
        self,
        *,
        num_classes: int = 10,
        img_size: int = 32,
        depth: int = 164,
        attention_levels: tuple[int, ...] = (),
        compatibility: str = "pc",
        normalization: str = "softmax",
        combine: str = "concat",
        indep_mode: str = "mean",
        match: str = "global",
        width: float = 1.0,
        drop_scale: float = 1.0,
        grad_averaging: bool = False,
        preprocess: str = "none",
    ) -> None:
        super().__init__(num_classes=num_classes, img_size=img_size, preprocess=preprocess)
        if depth < 11 or (depth - 2) % 9:
            raise ValueError(f"depth must be 9n+2 with n >= 1 (e.g. 164), got {depth}")
        levels = tuple(sorted(attention_levels))
        if any(lv not in (1, 2, 3) for lv in levels):
            raise ValueError(f"attention_levels must be a subset of (1, 2, 3), got {attention_levels}")
        units = (depth - 2) // 9
        self.levels = levels
        self.grad_averaging = grad_averaging
        c0, c1, c2, c3 = (scaled(c, width) for c in (16, 64, 128, 256))
        self.stem = nn.Conv2d(3, c0, 3, padding=1, bias=False)
        self.stages = nn.ModuleList(
            [_stage(c0, c1, units, 1), _stage(c1, c2, units, 2), _stage(c2, c3, units, 2)]
        )
        channels = {1: c1, 2: c2, 3: c3}
        strides = {1: 1, 2: 2, 3: 4}

        self.final: nn.Module | None = None
        self.global_path: nn.Module | None = None
        if not levels:
            self.final = nn.Sequential(
                nn.BatchNorm2d(c3), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
            )
            self.fc = nn.Linear(c3, num_classes)
        else:
            self.global_path = nn.Sequential(
                nn.BatchNorm2d(c3),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, 2, ceil_mode=True),
                nn.Conv2d(c3, c3, 3, padding=1),
                nn.BatchNorm2d(c3, eps=CONV_BN_EPS),
                nn.ReLU(inplace=True),
                Dropout(0.4 * drop_scale),
                nn.AdaptiveMaxPool2d(1),
                nn.Flatten(1),
                Dropout(0.5 * drop_scale),
                nn.Linear(c3, c3),
            )
            desc = self._build_attention_head(
                [channels[lv] for lv in levels],
                c3,
                num_classes,
                compatibility=compatibility,
                normalization=normalization,
                match=match,
                attn_drop=0.5 * drop_scale,
                head_drop=0.3 * drop_scale,
                combine=combine,
                indep_mode=indep_mode,
            )
            self.attn_info = [
                {"name": f"stage{lv}", "channels": channels[lv], "stride": strides[lv], "descriptor": d}
                for lv, d in zip(levels, desc)
            ]
        # The WRN code zeroes the biases of the backbone's linear layer (utils.FCinit): the baseline's
        # classifier. The attention blocks, the global path's FC and the attention head keep Torch's default
        # uniform biases (docs/fidelity.md row 5).
        init_official(self)
        if self.final is not None:
            with torch.no_grad():
                self.fc.bias.zero_()

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.stem(x)  # (B, 16, S, S)
        taps = {}
        for idx, stage in enumerate(self.stages, start=1):
            x = stage(x)
            taps[idx] = x
            if idx in self.levels and idx < 3:
                x = self._branch(x, 2)
        if self.final is not None:
            final = cast(nn.Sequential, self.final)
            return final[1](final[0](x)), []  # (B, 256, S/4, S/4): after the last BN-ReLU, as timm's ResNetV2
        return x, [taps[lv] for lv in self.levels if lv != 3]

    def _num_head_levels(self) -> int:
        return len([lv for lv in self.levels if lv != 3])

    def _head(self, final: torch.Tensor, levels: list[torch.Tensor]) -> tuple[AttentionOutput, torch.Tensor]:
        if self.final is not None:
            head = cast(nn.Sequential, self.final)
            feats = head[3](head[2](final))  # (B, 256)
            return AttentionOutput(self.fc(feats), [], []), feats
        assert self.global_path is not None
        taps = dict(zip([lv for lv in self.levels if lv != 3], levels))
        taps[3] = final
        g = self.global_path(self._branch(final, 2) if 3 in self.levels else final)  # (B, 256)
        return self._attend([taps[lv] for lv in self.levels], g)

    def gradcam_layer(self) -> nn.Module:
        return self.stages[-1]  # stage 3

    # The baseline (no attended level) has its own classifier, ``fc``, instead of the attention head.

    def get_classifier(self) -> nn.Module:
        return self.fc if self.final is not None else super().get_classifier()

    def head_modules(self) -> list[str]:
        return ["fc"] if self.final is not None else super().head_modules()

    def reset_classifier(self, num_classes: int) -> None:
        if self.final is None:
            super().reset_classifier(num_classes)
            return
        self.fc = nn.Linear(self.fc.in_features, num_classes)
        init_official(self.fc, zero_linear_bias=True)
        self._set_num_classes(num_classes)
