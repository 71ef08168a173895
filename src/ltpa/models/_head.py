"""The attention head shared by every model that attends several levels: attention blocks, per-level heads and
the combination of the levels into logits.

Paper: "Learn To Pay Attention", https://arxiv.org/abs/1804.02391 (method §1.1-1.6). :class:`AttentionModel`
is the base of VGG-att (:class:`ltpa.models.AttnVGG`), RN-att2 (:class:`ltpa.models.PreActResNet`) and the
attention on any backbone (:class:`ltpa.models.AttnBackbone`): each builds its trunk and global feature, then
calls :meth:`AttentionModel._build_attention_head` and, in its forward pass, :meth:`AttentionModel._attend`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ltpa.attention import LinearAttention, create_attention
from ltpa.layers import Dropout
from ltpa.models._base import AttentionOutput, LTPAModel, init_official

__all__ = ["AttentionHead", "AttentionModel"]


class _LevelHead(nn.Module):
    """Per-level BN1d -> ReLU -> Dropout before the classifier (official code, method §1.6)."""

    def __init__(self, channels: int, drop_rate: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(channels)
        self.drop = Dropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(F.relu(self.norm(x)))


class AttentionHead(nn.Module):
    """Combines the per-level descriptors into logits: ``concat`` or ``indep`` (method §1.6).

    ``indep`` gives each level its own linear classifier. ``indep_mode="mean"`` (default, the paper) returns
    the log of the mean of the per-level class probabilities; ``"product"`` (official code) returns the sum
    of the per-level log-probabilities, a product of experts. Either way the result is a valid logit vector
    for cross-entropy.
    """

    def __init__(
        self,
        channels: list[int],
        num_classes: int,
        *,
        combine: str = "concat",
        indep_mode: str = "mean",
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__()
        if combine not in ("concat", "indep"):
            raise ValueError(f"unknown combine {combine!r}; choose one of concat, indep")
        if indep_mode not in ("mean", "product"):
            raise ValueError(f"unknown indep_mode {indep_mode!r}; choose one of mean, product")
        self.combine = combine
        self.indep_mode = indep_mode
        self.levels = nn.ModuleList([_LevelHead(c, drop_rate) for c in channels])
        self.fc: nn.Module
        if combine == "concat":
            self.fc = nn.Linear(sum(channels), num_classes)
        else:
            self.fc = nn.ModuleList([nn.Linear(c, num_classes) for c in channels])
        self.channels = list(channels)

    def features(self, descriptors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([head(d) for head, d in zip(self.levels, descriptors)], dim=1)  # (B, sum C_s)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        if self.combine == "concat":
            return self.fc(feats)
        assert isinstance(self.fc, nn.ModuleList)
        parts = torch.split(feats, self.channels, dim=1)
        log_probs = torch.stack([F.log_softmax(fc(p), dim=1) for fc, p in zip(self.fc, parts)])  # (S, B, K)
        if self.indep_mode == "product":
            return log_probs.sum(0)
        return torch.logsumexp(log_probs, dim=0) - torch.log(torch.tensor(float(len(self.channels))))

    def reset(self, num_classes: int) -> None:
        if self.combine == "concat":
            self.fc = nn.Linear(sum(self.channels), num_classes)
        else:
            self.fc = nn.ModuleList([nn.Linear(c, num_classes) for c in self.channels])
        init_official(self.fc)


class AttentionModel(LTPAModel):
    """An :class:`LTPAModel` whose head attends local features steered by a global feature ``g``.

    It owns ``self.attention`` (one :class:`ltpa.attention.LinearAttention` per attended level, shallowest
    first) and ``self.head`` (:class:`AttentionHead`: the per-level BN1d-ReLU-Dropout blocks and the
    classifier). Subclasses build their trunk and global path, then call :meth:`_build_attention_head`; their
    ``_head`` computes ``g`` and the local features and returns :meth:`_attend`'s result.
    """

    attention: nn.ModuleList
    head: AttentionHead

    def _build_attention_head(
        self,
        local_channels: Sequence[int],
        global_channels: int,
        num_classes: int,
        *,
        compatibility: str,
        normalization: str,
        match: str,
        attn_drop: float,
        head_drop: float,
        combine: str,
        indep_mode: str,
        mode: str = "learned",
    ) -> list[int]:
        """Creates ``self.attention`` (one block per entry of ``local_channels``), then ``self.head``.

        Args:
            local_channels: the channels of each attended level, shallowest first.
            global_channels: the width of ``g``.
            num_classes: K.
            compatibility, normalization, match: of each :class:`ltpa.attention.LinearAttention`.
            attn_drop: the dropout inside the attention blocks (on ``g`` in the projections).
            head_drop: the dropout of each level's head before the classifier.
            combine, indep_mode: of :class:`AttentionHead`.
            mode: the attention's ablation mode (``"learned"``, the paper, or an ablation control).

        Returns:
            The width of each level's descriptor.
        """
        self.attention = nn.ModuleList(
            [
                create_attention(
                    channels,
                    global_channels,
                    compatibility,
                    normalization,
                    match=match,
                    drop_rate=attn_drop,
                    mode=mode,
                )
                for channels in local_channels
            ]
        )
        widths = [int(cast(LinearAttention, attn).out_channels) for attn in self.attention]
        self.head = AttentionHead(
            widths, num_classes, combine=combine, indep_mode=indep_mode, drop_rate=head_drop
        )
        return widths

    def _attend(
        self, local_feats: list[torch.Tensor], g: torch.Tensor
    ) -> tuple[AttentionOutput, torch.Tensor]:
        """Attention of every level against ``g``, then the head.

        With gradient averaging on (method §3.3), each local map's gradient through attention is halved and
        ``g``'s is divided by the number of levels.

        Shape:
            - local_feats[s]: (B, C_s, H_s, W_s), shallowest first; g: (B, D)
            - returns the :class:`AttentionOutput` and the pre-logits features (B, sum of descriptor widths)
        """
        maps, descriptors = [], []
        for l, attn in zip(local_feats, self.attention):
            g_a, a = attn(self._branch(l, 2), self._branch(g, len(self.attention)))  # (B, C_s), (B, H_s, W_s)
            descriptors.append(g_a)
            maps.append(a)
        feats = self.head.features(descriptors)  # (B, sum C_s)
        return AttentionOutput(self.head.logits(feats), maps, descriptors), feats

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def head_modules(self) -> list[str]:
        return ["head"]  # the per-level BN1d-ReLU-Dropout blocks and the linear layer(s)

    def reset_classifier(self, num_classes: int) -> None:
        self.head.reset(num_classes)
        self._set_num_classes(num_classes)
