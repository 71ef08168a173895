"""The VGG family of "Learn To Pay Attention": the cifar.torch baseline, VGG-GAP, PAN and VGG-att{1,2,3}.

Paper: https://arxiv.org/abs/1804.02391 (method §2.1-2.3, §2.5). Layouts, dropouts and parameter counts follow
the official Torch code; channel counts scale with ``width`` so narrow versions keep the same architecture.
"""

from __future__ import annotations

import torch
from torch import nn

from ltpa.attention import LinearAttention
from ltpa.layers import Dropout
from ltpa.models._base import AttentionOutput, LTPAModel, conv_bn_relu, init_official, scaled
from ltpa.models._head import AttentionHead, AttentionModel

__all__ = ["LEVELS", "VGG", "VGGGAP", "VGGPAN", "AttentionHead", "AttnVGG"]

# Attended layers of VGG-att1/2/3 (method §2.2): the last 1, 2 or 3 of conv7, conv10 and conv13.
LEVELS: dict[int, tuple[int, ...]] = {1: (13,), 2: (10, 13), 3: (7, 10, 13)}
# Output channels and dropout after each of conv1..conv13 in the attention trunk (method §2.2).
_TRUNK = [(64, 0.3), (64, 0.0), (128, 0.4), (128, 0.0), (256, 0.4), (256, 0.4), (256, 0.0)]
_TRUNK += [(512, 0.4), (512, 0.4), (512, 0.0), (512, 0.4), (512, 0.4), (512, 0.0)]


def _default_first_pool(img_size: int) -> int:
    # CUB's 80x80 input: a 5x5 pool after conv7 brings 80 to the 16x16 of the CIFAR layout (method §2.3).
    return 5 if img_size == 80 else 2


def _block(first: int, last: int, in_ch: int, width: float, drop_scale: float) -> tuple[nn.Sequential, int]:
    layers = []
    for idx in range(first, last + 1):
        channels, drop = _TRUNK[idx - 1]
        out_ch = scaled(channels, width)
        layer = conv_bn_relu(in_ch, out_ch, drop * drop_scale)
        # the same canonical name in every VGG layout (paired initialisation, ltpa.models.canonical_names)
        layer.ltpa_name = f"conv{idx}"  # type: ignore[assignment]
        layers.append(layer)
        in_ch = out_ch
    return nn.Sequential(*layers), in_ch


class _GlobalPath(nn.Module):
    """conv14 and conv15 with pools, then Dropout and FC-1: the global feature g (method §2.2).

    The first pools are the paper's 2x2 (ceil) pools; the last is adaptive so that any input size ends at
    1x1 (at 32x32 input it is exactly the paper's 2x2 pool).
    """

    def __init__(self, in_ch: int, width: float, drop_scale: float, first_pool: int = 2) -> None:
        super().__init__()
        ch = scaled(512, width)
        self.features = nn.Sequential(
            nn.MaxPool2d(first_pool, first_pool, ceil_mode=True),
            conv_bn_relu(in_ch, ch, 0.4 * drop_scale),
            nn.MaxPool2d(2, 2, ceil_mode=True),
            conv_bn_relu(ch, ch, 0.4 * drop_scale),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(1),
            Dropout(0.5 * drop_scale),
        )
        self.fc = nn.Linear(ch, ch)  # FC-1; no BN/ReLU after it in the official code
        self.out_channels = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))  # (B, D)


class AttnVGG(AttentionModel):
    """VGG-att{1,2,3} (method §2.2): the cifar.torch VGG with the first two max-pools removed, attention at
    conv7/conv10/conv13 steered by the global feature g = FC-1, and a classifier on the pooled descriptors.

    Args:
        num_classes: K.
        img_size: input side (32 for CIFAR/SVHN, 80 for CUB; other sizes work with adaptive pooling).
        attention_levels: which of conv7, conv10, conv13 are attended (1, 2 or 3 levels).
        compatibility: ``"pc"``, ``"dp"`` or ``"add"`` (see :class:`ltpa.attention.LinearAttention`).
        normalization: ``"softmax"`` (paper) or ``"sigmoid"``.
        combine: ``"concat"`` or ``"indep"``.
        indep_mode: ``"mean"`` of probabilities (paper) or ``"product"`` of experts (official code).
        match: ``"global"`` projects g down to conv7's width (official, 1280-d att3 head) or ``"local"``
            projects conv7 up (1536-d).
        width: channel multiplier.
        drop_scale: multiplies every dropout probability (0 turns dropout off).
        first_pool: the pool after conv7 (default 2, or 5 for 80x80 input as in the CUB models).
        grad_averaging: the official code's gradient averaging at branch points (method §3.3).
        preprocess: input normalisation preset (``ltpa.preprocess``).
        attention_mode: ``"learned"`` (the paper), or an ablation control with the same parameters, FLOPs and
            head: ``"uniform"`` (exactly uniform maps: uniform pooling), ``"frozen"`` (attention parameters
            kept at their initial values), ``"detached"`` (the map gets no training signal) or ``"from_g"`` (the
            classifier sees the global feature g in each
            descriptor's place). See :class:`ltpa.attention.LinearAttention`.
        init_seed: draw every layer's initial weights from ``(init_seed, layer name)`` instead of the global
            stream (:func:`ltpa.models.init_official`): models that share layers (conv1-13 across the VGG
            family, everything but the ablated part across attention modes) then start equal.

    Shape:
        - input: (B, 3, img_size, img_size) in [0, 1]; output: (B, num_classes).
    """

    gradcam_level = "conv13"

    def __init__(
        self,
        *,
        num_classes: int = 10,
        img_size: int = 32,
        attention_levels: tuple[int, ...] = (10, 13),
        compatibility: str = "pc",
        normalization: str = "softmax",
        combine: str = "concat",
        indep_mode: str = "mean",
        match: str = "global",
        width: float = 1.0,
        drop_scale: float = 1.0,
        first_pool: int | None = None,
        grad_averaging: bool = False,
        preprocess: str = "none",
        attention_mode: str = "learned",
        init_seed: int | None = None,
    ) -> None:
        super().__init__(num_classes=num_classes, img_size=img_size, preprocess=preprocess)
        levels = tuple(sorted(attention_levels))
        if not levels or any(lv not in (7, 10, 13) for lv in levels):
            raise ValueError(f"attention_levels must be a subset of (7, 10, 13), got {attention_levels}")
        self.levels = levels
        self.grad_averaging = grad_averaging
        first_pool = first_pool or _default_first_pool(img_size)

        self.block7, c7 = _block(1, 7, 3, width, drop_scale)
        # At 80x80 att3 needs conv7 at 32x32 (method §2.3): resample, then the usual 2x2 pool.
        resample = first_pool != 2 and 7 in levels
        side7 = img_size
        if resample:
            side7 = 2 * -(-img_size // first_pool)
            self.resample7: nn.Module = nn.AdaptiveAvgPool2d(side7)
            self.pool7 = nn.MaxPool2d(2, 2, ceil_mode=True)
        else:
            self.resample7 = nn.Identity()
            self.pool7 = nn.MaxPool2d(first_pool, first_pool, ceil_mode=True)
        self.block10, c10 = _block(8, 10, c7, width, drop_scale)
        self.pool10 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.block13, c13 = _block(11, 13, c10, width, drop_scale)
        self.global_path = _GlobalPath(c13, width, drop_scale)
        dim_g = self.global_path.out_channels

        channels = {7: c7, 10: c10, 13: c13}
        stride7 = img_size / side7
        stride10 = stride7 * (2 if resample else first_pool)
        strides = {
            lv: int(s) if float(s).is_integer() else s
            for lv, s in ((7, stride7), (10, stride10), (13, stride10 * 2))
        }
        desc = self._build_attention_head(
            [channels[lv] for lv in levels],
            dim_g,
            num_classes,
            compatibility=compatibility,
            normalization=normalization,
            match=match,
            attn_drop=0.5 * drop_scale,
            head_drop=0.5 * drop_scale,
            combine=combine,
            indep_mode=indep_mode,
            mode=attention_mode,
        )
        self.attn_info = [
            {"name": f"conv{lv}", "channels": channels[lv], "stride": strides[lv], "descriptor": d}
            for lv, d in zip(levels, desc)
        ]
        self.attention_mode = attention_mode
        init_official(self, seed=init_seed)

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        taps: dict[int, torch.Tensor] = {}
        x = self.resample7(self.block7(x))  # (B, C7, S, S)
        taps[7] = x
        x = self.pool7(self._branch(x, 2) if 7 in self.levels else x)
        x = self.block10(x)  # (B, C10, S/2, S/2)
        taps[10] = x
        x = self.pool10(self._branch(x, 2) if 10 in self.levels else x)
        x = self.block13(x)  # (B, C13, S/4, S/4)
        return x, [taps[lv] for lv in self.levels if lv != 13]

    def _num_head_levels(self) -> int:
        return len([lv for lv in self.levels if lv != 13])

    def _head(self, final: torch.Tensor, levels: list[torch.Tensor]) -> tuple[AttentionOutput, torch.Tensor]:
        taps = dict(zip([lv for lv in self.levels if lv != 13], levels))
        taps[13] = final
        g = self.global_path(self._branch(final, 2) if 13 in self.levels else final)  # (B, D)
        return self._attend([taps[lv] for lv in self.levels], g)

    def gradcam_layer(self) -> nn.Module:
        return self.block13  # conv13, not conv15 of the global path (no gradient under pc, method §1.7)


class VGG(LTPAModel):
    """The baseline: cifar.torch VGG-BN-Drop (method §2.1; 80x80 layout of 2.3 for CUB).

    Pools follow conv2, conv4, conv7, conv10 and conv13. When the map after conv10's pool is larger than 2x2
    (80x80 input), a pool is inserted before conv13, as in the CUB model; the final pool is adaptive.
    No attention: ``forward_attention`` returns empty ``maps`` and ``descriptors``.
    """

    gradcam_level = "conv13"

    def __init__(
        self,
        *,
        num_classes: int = 10,
        img_size: int = 32,
        width: float = 1.0,
        drop_scale: float = 1.0,
        preprocess: str = "none",
        init_seed: int | None = None,
    ) -> None:
        super().__init__(num_classes=num_classes, img_size=img_size, preprocess=preprocess)
        pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        b2, c = _block(1, 2, 3, width, drop_scale)
        b4, c = _block(3, 4, c, width, drop_scale)
        b7, c = _block(5, 7, c, width, drop_scale)
        b10, c = _block(8, 10, c, width, drop_scale)
        b12, c = _block(11, 12, c, width, drop_scale)
        b13, c = _block(13, 13, c, width, drop_scale)
        side = img_size
        for _ in range(4):
            side = -(-side // 2)
        # An Identity at 32x32 keeps the layer indices (and so the weight names) of the 80x80 layout, so that
        # CUB models can start from CIFAR-100 weights (method §2.3).
        extra_pool: nn.Module = nn.MaxPool2d(2, 2, ceil_mode=True) if side > 2 else nn.Identity()
        self.features = nn.Sequential(
            b2,
            pool,
            b4,
            pool,
            b7,
            pool,
            b10,
            pool,
            b12,
            extra_pool,
            b13,
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(1),
        )
        ch = scaled(512, width)
        self.pre_logits = nn.Sequential(
            Dropout(0.5 * drop_scale), nn.Linear(c, ch), nn.BatchNorm1d(ch), nn.ReLU(inplace=True)
        )
        self.drop = Dropout(0.5 * drop_scale)
        self.fc = nn.Linear(ch, num_classes)
        init_official(self, seed=init_seed)

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        for layer in list(self.features)[:-2]:  # all but the global pool and the flatten
            x = layer(x)
        return x, []  # (B, C, h, w)

    def _head(self, final: torch.Tensor, levels: list[torch.Tensor]) -> tuple[AttentionOutput, torch.Tensor]:
        pooled = self.features[-1](self.features[-2](final))  # (B, C)
        feats = self.pre_logits(pooled)  # (B, 512): the BN-ReLU output after FC-1 (method §4.2)
        return AttentionOutput(self.fc(self.drop(feats)), [], []), feats

    def gradcam_layer(self) -> nn.Module:
        blocks = [m for m in self.features if any(isinstance(c, nn.Conv2d) for c in m.modules())]
        return blocks[-1]  # conv13's block

    def get_classifier(self) -> nn.Module:
        return self.fc

    def head_modules(self) -> list[str]:
        return ["pre_logits", "fc"]  # cifar.torch's classifier: Dropout, FC-512, BN, ReLU, Dropout, FC

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.fc.in_features, num_classes)
        init_official(self.fc)
        self._set_num_classes(num_classes)


class VGGGAP(LTPAModel):
    """VGG-GAP (Zhou et al. 2016, method §2.5): conv1-13 of the attention trunk, global average pooling and a
    linear classifier. Its class activation map ``M_k = sum_c w_kc F_c`` over conv13 is its attention map.

    ``forward_attention`` returns the CAM of the predicted class (unnormalised) and the pooled vector;
    :meth:`cam` gives the CAM of any class.
    """

    gradcam_level = "conv13"

    map_kind = "cam"

    def __init__(
        self,
        *,
        num_classes: int = 10,
        img_size: int = 32,
        width: float = 1.0,
        drop_scale: float = 1.0,
        first_pool: int | None = None,
        preprocess: str = "none",
        init_seed: int | None = None,
    ) -> None:
        super().__init__(num_classes=num_classes, img_size=img_size, preprocess=preprocess)
        first_pool = first_pool or _default_first_pool(img_size)
        b7, c = _block(1, 7, 3, width, drop_scale)
        b10, c = _block(8, 10, c, width, drop_scale)
        b13, c = _block(11, 13, c, width, drop_scale)
        self.features = nn.Sequential(
            b7,
            nn.MaxPool2d(first_pool, first_pool, ceil_mode=True),
            b10,
            nn.MaxPool2d(2, 2, ceil_mode=True),
            b13,
        )
        self.fc = nn.Linear(c, num_classes)
        self.attn_info = [{"name": "conv13", "channels": c, "stride": first_pool * 2, "descriptor": c}]
        init_official(self, seed=init_seed)

    def _cam(self, fmap: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        w = self.fc.weight[classes]  # (B, C)
        return torch.einsum("bc,bchw->bhw", w, fmap)  # (B, H, W)

    def cam(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Class activation maps (B, H, W) of ``classes`` (default: the predicted class) for [0, 1] images."""
        self._check_input(x)
        fmap = self.features(self.preprocess(x))
        if classes is None:
            classes = self.fc(fmap.mean(dim=(2, 3))).argmax(1)
        return self._cam(fmap, classes.to(x.device))

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.features(x), []  # (B, C, h, w)

    def _head(self, fmap: torch.Tensor, levels: list[torch.Tensor]) -> tuple[AttentionOutput, torch.Tensor]:
        pooled = fmap.mean(dim=(2, 3))  # (B, C)
        logits = self.fc(pooled)
        return AttentionOutput(logits, [self._cam(fmap, logits.argmax(1))], [pooled]), pooled

    def gradcam_layer(self) -> nn.Module:
        return self.features[-1]  # conv11-13

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.fc.in_features, num_classes)
        init_official(self.fc)
        self._set_num_classes(num_classes)


class VGGPAN(LTPAModel):
    """PAN, the progressive attention baseline (Seo et al. 2016) as the authors built it (method §2.5).

    Level 1 gates the whole conv10 map with a sigmoid of a pc score against ``g1`` (computed from conv10);
    conv11-13 run on the gated map; level 2 is a pc softmax over conv13 against ``g2`` (computed from conv13),
    and only its descriptor feeds the classifier. ``maps`` are the level-1 gate and the level-2 softmax;
    ``descriptors`` the spatial mean of the gated conv10 map and the level-2 pooled vector.
    """

    gradcam_level = "conv13"

    def __init__(
        self,
        *,
        num_classes: int = 10,
        img_size: int = 32,
        width: float = 1.0,
        drop_scale: float = 1.0,
        first_pool: int | None = None,
        grad_averaging: bool = False,
        preprocess: str = "none",
        init_seed: int | None = None,
    ) -> None:
        super().__init__(num_classes=num_classes, img_size=img_size, preprocess=preprocess)
        self.grad_averaging = grad_averaging
        first_pool = first_pool or _default_first_pool(img_size)
        b7, c = _block(1, 7, 3, width, drop_scale)
        b10, c10 = _block(8, 10, c, width, drop_scale)
        self.trunk10 = nn.Sequential(b7, nn.MaxPool2d(first_pool, first_pool, ceil_mode=True), b10)
        self.global1 = _GlobalPath(c10, width, drop_scale, first_pool=4)
        self.attn1 = LinearAttention(c10, self.global1.out_channels, normalization="sigmoid")
        b13, c13 = _block(11, 13, c10, width, drop_scale)
        self.trunk13 = nn.Sequential(nn.MaxPool2d(2, 2, ceil_mode=True), b13)
        self.global2 = _GlobalPath(c13, width, drop_scale)
        self.attn2 = LinearAttention(c13, self.global2.out_channels, normalization="softmax")
        self.head = AttentionHead([c13], num_classes, drop_rate=0.5 * drop_scale)
        self.attn_info = [
            {"name": "conv10", "channels": c10, "stride": first_pool, "descriptor": c10},
            {"name": "conv13", "channels": c13, "stride": first_pool * 2, "descriptor": c13},
        ]
        init_official(self, seed=init_seed)

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self._gated_trunk(x)[0], []

    def _gated_trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """conv13's map, the level-1 gate and the gated conv10 map."""
        l10 = self.trunk10(x)  # (B, C, S/2, S/2)
        g1 = self.global1(self._branch(l10, 2))
        l10 = self._branch(l10, 2)
        gate = torch.sigmoid(self.attn1.compatibility_scores(l10, g1))  # (B, h, w)
        gated = l10 * gate[:, None]
        return self.trunk13(gated), gate, gated  # (B, C, S/4, S/4), ...

    def _head(self, l13: torch.Tensor, levels: list[torch.Tensor]) -> tuple[AttentionOutput, torch.Tensor]:
        g2 = self.global2(self._branch(l13, 2))
        g_a, a = self.attn2(self._branch(l13, 2), g2)
        feats = self.head.features([g_a])
        return AttentionOutput(self.head.logits(feats), [a], [g_a]), feats

    def _forward(self, x: torch.Tensor) -> tuple[AttentionOutput, torch.Tensor]:
        l13, gate, gated = self._gated_trunk(x)
        out, feats = self._head(l13, [])
        maps, descriptors = [gate, *out.maps], [gated.mean(dim=(2, 3)), *out.descriptors]
        return AttentionOutput(out.logits, maps, descriptors), feats

    def gradcam_layer(self) -> nn.Module:
        return self.trunk13  # conv11-13 on the gated conv10 map

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def head_modules(self) -> list[str]:
        return ["head"]  # the per-level BN1d-ReLU-Dropout blocks and the linear layer

    def reset_classifier(self, num_classes: int) -> None:
        self.head.reset(num_classes)
        self._set_num_classes(num_classes)
