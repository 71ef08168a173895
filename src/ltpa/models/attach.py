"""Attention for any CNN: the trainable attention of "Learn To Pay Attention" on timm, torchvision and plain
PyTorch backbones.

Paper: Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391 (method §1 for the attention, §2.4 for
RN-att2, which attends the last two stages of a ResNet).

:func:`attach` wraps a CNN so that it follows the model contract of :class:`ltpa.models.LTPAModel`::

    backbone = timm.create_model("resnet50", features_only=True)
    model = attach(backbone, levels=("layer3", "layer4"), compatibility="pc", num_classes=200)
    out = model.forward_attention(images)  # images in [0, 1]: out.logits, out.maps, out.descriptors

What the wrapper computes (method §1.1-1.6):

* **Stages.** A backbone is a sequence of stages, one per spatial resolution. Local features ``l^s`` are the
  outputs of the attended stages (``levels``); the global feature ``g`` is the output of the final stage,
  average-pooled over all positions and, with ``global_dim``, mapped by a learned linear layer (the
  counterpart of VGG-att's FC-1). The backbone's own pooling and classifier are not used: as in the paper, a
  new linear classifier sees only the attention-pooled descriptors.
* **Attention** per level: :class:`ltpa.attention.LinearAttention` (``pc``, ``dp`` or ``add`` compatibility,
  softmax or sigmoid); levels are combined by :class:`ltpa.models._head.AttentionHead` (``concat``/``indep``).
  The score layer of ``pc``/``add`` starts at zero, so every map starts uniform: the descriptor of a level
  starts as the global average pool the backbone was trained with, and attention is learned from there.

How stages are found:

* **timm** (any CNN): through timm's own feature extraction. Pass a ``features_only=True`` model (its
  ``feature_info`` lists the stages), or an ordinary timm classifier, which is wrapped with
  ``forward_intermediates`` (its classifier head is pruned). ``levels`` are indices into ``feature_info``
  (negative ones count from the end) or its module names (``"layer3"``, ``"stages.2"``, ``"blocks.4"``).
* **torchvision classification models and plain ``nn.Module`` s**: one probe forward pass at construction
  records every layer's output; the top-level layers (and, recursively, the children of those whose children
  run at more than two resolutions, such as ``features`` of VGG, EfficientNet or ConvNeXt) up to the first
  adaptive pooling or non-spatial output form the trunk, and the last layer at each resolution is a stage. ``levels`` are
  stage indices or the names of any modules (``named_modules``). torchvision models are then cut after the
  final stage with ``torchvision.models.feature_extraction.create_feature_extractor`` (their head is
  dropped); other modules run whole, with forward hooks that exist only during each forward pass.

Registered names (``ltpa.create_model``), resolved on demand::

    timm/<timm model>_att<N>[_concat|_indep]_<pc|dp|add>     e.g. timm/resnet50_att2_pc
    tv/<torchvision model>_att<N>[_concat|_indep]_<pc|dp|add>  e.g. tv/resnet18_att3_indep_dp

``att<N>`` attends the last N stages, the final one included (``att2`` on a ResNet: ``layer3`` and
``layer4``, as RN-att2 attends the last two stages); ``concat`` is the default combination. The timm model
name may carry a pretrained tag (``timm/resnet50.a1_in1k_att2_pc``). Keyword arguments: ``num_classes``
(default 1000), ``img_size`` (default 224), ``pretrained`` (default False; see below), ``backbone_kwargs``
(passed to ``timm.create_model`` / ``torchvision.models.get_model``) and those of :class:`AttnBackbone`
except ``levels``, which the name fixes.

``pretrained=True`` loads the backbone's ImageNet weights only if they are already on this machine (the
Hugging Face cache or the torch hub cache, where timm and torchvision put downloads); nothing is ever
downloaded. A path loads that weights file instead. The checkpoint of a trained model holds all its weights,
so ``pretrained`` is not recorded in ``model_kwargs`` and a checkpoint loads without the ImageNet weights.

Code layout: this module holds :class:`AttnBackbone`, :func:`attach` and the registration of the ``timm`` and
``tv`` families; the taps are in :mod:`ltpa.models._taps`, stage discovery in :mod:`ltpa.models._stages`,
backbone resolution (names, weights) in :mod:`ltpa.models._backbones`, and the attention head shared with the
other attention models in :mod:`ltpa.models._head`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ltpa.attention import LinearAttention
from ltpa.errors import LTPAError
from ltpa.models._backbones import _normalisation, _resolve_timm, _resolve_tv
from ltpa.models._base import AttentionOutput
from ltpa.models._head import AttentionModel
from ltpa.models._registry import register_family
from ltpa.models._stages import Level, _resolve, find_stages
from ltpa.models._taps import Extractor, _build_taps, _FxTaps, capture_outputs
from ltpa.preprocess import MeanStd

__all__ = ["AttnBackbone", "attach", "capture_outputs", "find_stages"]


class AttnBackbone(AttentionModel):
    """A CNN backbone with the attention of "Learn To Pay Attention" on some of its stages.

    Under ``pc`` compatibility with softmax normalisation the global feature cancels in the softmax
    (method §1.7): maps and logits do not depend on ``g``, the global path (``global_fc`` and the projections
    of ``g`` inside the attention layers) receives exactly zero gradient, and stages after the deepest
    attended one are not trained at all. The backbone is trained through the local features. Attend the
    final stage (the default levels do), or use ``dp``/``add``, for every stage to learn.

    Args:
        backbone: a timm model (``features_only`` or classifier), a torchvision classification model, or any
            CNN module taking (B, 3, H, W) images; see the module docstring. It becomes a submodule.
        levels: the attended stages, as stage indices (negative count from the end) or layer names; they are
            ordered shallowest first.
        global_level: the stage whose pooled output is ``g`` (default: the final stage).
        num_classes: K.
        img_size: the training input side, used to find stages and their strides (any size runs).
        compatibility: ``"pc"``, ``"dp"`` or ``"add"`` (:class:`ltpa.attention.LinearAttention`).
        normalization: ``"softmax"`` (paper) or ``"sigmoid"``.
        combine: ``"concat"`` (one classifier over all descriptors) or ``"indep"`` (one per level).
        indep_mode: ``"mean"`` of probabilities (paper) or ``"product"`` (official code), for ``indep``.
        match: ``"global"`` projects ``g`` to each level's width (official default) or ``"local"`` projects
            the local features to ``g``'s width (method §1.3).
        global_dim: if set, ``g`` is the pooled final stage mapped by a learned ``Linear`` to this width;
            otherwise it is the pooled final stage itself.
        drop_rate: dropout on each descriptor before the classifier and on ``g`` in the projections (0.3 as
            in RN-att2; 0.5 in VGG-att).
        preprocess: ``"backbone"`` (the normalisation the backbone's weights expect: timm's
            ``pretrained_cfg`` mean/std, ImageNet's for torchvision, none for other modules) or a preset of
            :mod:`ltpa.preprocess`.
        extractor: ``"auto"``, or force ``"fx"`` (``create_feature_extractor``) or ``"hooks"`` for non-timm
            backbones.

    Shape:
        - input: (B, 3, H, W) in [0, 1]; output: (B, num_classes).
        - ``forward_attention``: maps[s] (B, H / stride_s, W / stride_s), descriptors[s] (B, attn_info[s]
          ["descriptor"]).
        - ``forward_features``: the map of ``global_level`` (B, C, H / stride, W / stride), carrying the other
          attended maps (:class:`ltpa.models.TrunkFeatures`) for ``forward_head``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        levels: Sequence[Level] = (-2, -1),
        global_level: Level = -1,
        num_classes: int,
        img_size: int = 224,
        compatibility: str = "pc",
        normalization: str = "softmax",
        combine: str = "concat",
        indep_mode: str = "mean",
        match: str = "global",
        global_dim: int | None = None,
        drop_rate: float = 0.3,
        preprocess: str = "backbone",
        extractor: Extractor = "auto",
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            img_size=img_size,
            preprocess="none" if preprocess == "backbone" else preprocess,
        )
        if isinstance(levels, str | int) or not levels:
            raise LTPAError(
                f"levels must be a non-empty list of stage indices or layer names, got {levels!r}"
            )
        stats = _normalisation(backbone) if preprocess == "backbone" else None
        if stats is not None:
            self.preprocess = MeanStd(*stats)

        taps, stages, layers, order = _build_taps(backbone, img_size, extractor)
        if not stages:
            raise LTPAError("no convolutional stages found in the backbone; pass levels as layer names")
        rank = {name: i for i, name in enumerate(order)}
        attended = sorted((_resolve(lv, stages, layers) for lv in levels), key=lambda d: rank[d["name"]])
        names = [d["name"] for d in attended]
        if len(set(names)) != len(names):
            raise LTPAError(f"levels {list(levels)} name the same layer twice ({', '.join(names)})")
        glob = _resolve(global_level, stages, layers)
        taps.select_outputs([*names, glob["name"]])
        self.backbone = taps
        self.stages = stages
        self.global_info = glob
        # forward_features returns the global level's map; attended levels that are that same layer are
        # not repeated in its ``levels``.
        self._local_is_global = [name == glob["name"] for name in names]
        self.preprocess_name = preprocess
        # The global level's map passes through this identity so that Grad-CAM can hook it where the
        # backbone's own layer never runs as a module (a torchvision model traced into one graph).
        self.global_map = nn.Identity()

        dim_g = glob["channels"]
        self.global_fc: nn.Linear | None = None
        if global_dim is not None:
            self.global_fc = nn.Linear(dim_g, global_dim)
            dim_g = global_dim
        widths = self._build_attention_head(
            [d["channels"] for d in attended],
            dim_g,
            num_classes,
            compatibility=compatibility,
            normalization=normalization,
            match=match,
            attn_drop=drop_rate,
            head_drop=drop_rate,
            combine=combine,
            indep_mode=indep_mode,
        )
        for attn in self.attention:
            _zero_scores(attn)  # type: ignore[arg-type]
        self.attn_info = [{**d, "descriptor": w} for d, w in zip(attended, widths)]

    # ``create_model`` records its kwargs for checkpoints; the pretrained flag only chooses initial weights,
    # which a checkpoint replaces, so it is left out and a checkpoint loads without the ImageNet weights.
    @property
    def model_kwargs(self) -> dict[str, Any]:
        return self.__dict__.get("_model_kwargs", {})

    @model_kwargs.setter
    def model_kwargs(self, kwargs: dict[str, Any]) -> None:
        self.__dict__["_model_kwargs"] = {k: v for k, v in kwargs.items() if k != "pretrained"}

    @property  # type: ignore[misc]
    def gradcam_level(self) -> str:  # type: ignore[override]
        """The global level's layer name (``layer4``), as the attended levels are named."""
        return str(self.global_info["name"])

    def gradcam_layer(self) -> nn.Module:
        """The module whose output is the global level's map (the backbone's final attended stage), found
        under the taps by its name; ``global_map``, the identity that map passes through, where the taps
        hide it or traced it into a graph whose modules do not run as the layer (torchvision backbones)."""
        if isinstance(self.backbone, _FxTaps):
            return self.global_map
        target = str(self.global_info["name"])
        flat = target.replace(".", "_")
        for name, module in self.backbone.named_modules():
            if name in (target, flat) or name.endswith(("." + target, "." + flat)):
                return module
        return self.global_map

    def global_feature(self, final: torch.Tensor) -> torch.Tensor:
        """``g`` from the final stage's output.

        Shape:
            - final: (B, C, H, W); returns (B, D), D = ``global_dim`` or C.
        """
        g = final.mean(dim=(2, 3))  # (B, C)
        return self.global_fc(g) if self.global_fc is not None else g

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        *local_feats, final = self.backbone(x)
        final = self.global_map(final)
        return final, [l for l, same in zip(local_feats, self._local_is_global) if not same]

    def _num_head_levels(self) -> int:
        return self._local_is_global.count(False)

    def _head(self, final: torch.Tensor, levels: list[torch.Tensor]) -> tuple[AttentionOutput, torch.Tensor]:
        others = iter(levels)
        local_feats = [final if same else next(others) for same in self._local_is_global]
        g = self.global_feature(final)  # (B, D)
        return self._attend(local_feats, g)  # no gradient averaging here: _branch is the identity


@torch.no_grad()
def _zero_scores(attn: LinearAttention) -> None:
    # A zero score layer makes every map uniform at the start: descriptors begin as global average pooling.
    if attn.score is not None:
        attn.score.weight.zero_()
        if attn.score.bias is not None:
            attn.score.bias.zero_()


def attach(
    backbone: nn.Module,
    levels: Sequence[Level] = (-2, -1),
    *,
    compatibility: str = "pc",
    normalization: str = "softmax",
    combine: str = "concat",
    num_classes: int,
    **kwargs: Any,
) -> AttnBackbone:
    """Puts the attention of "Learn To Pay Attention" on a CNN.

    Args:
        backbone: a timm model, a torchvision classification model or any CNN module.
        levels: attended stages (indices or layer names); default the last two, as RN-att2.
        compatibility: ``"pc"``, ``"dp"`` or ``"add"``.
        normalization: ``"softmax"`` or ``"sigmoid"``.
        combine: ``"concat"`` or ``"indep"``.
        num_classes: K.
        **kwargs: the other arguments of :class:`AttnBackbone` (``img_size``, ``global_dim``, ...).

    Returns:
        The wrapped model; ``model(x)`` gives logits for [0, 1] images, ``model.forward_attention(x)`` the
        maps and descriptors, ``model.attn_info`` the attended levels.

    Shape:
        - input: (B, 3, H, W) in [0, 1]; output: (B, num_classes).
    """
    return AttnBackbone(
        backbone,
        levels=levels,
        compatibility=compatibility,
        normalization=normalization,
        combine=combine,
        num_classes=num_classes,
        **kwargs,
    )


# ------------------------------------------------------------------------------------ registered names

register_family("timm", _resolve_timm)
register_family("tv", _resolve_tv)
