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
  softmax or sigmoid); levels are combined by :class:`ltpa.models.vgg.AttentionHead` (``concat``/``indep``).
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
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlparse

import torch
from torch import nn

from ltpa.attention import LinearAttention, create_attention
from ltpa.errors import LTPAError
from ltpa.models._base import AttentionOutput, LTPAModel
from ltpa.models._registry import register_family
from ltpa.models.vgg import AttentionHead
from ltpa.preprocess import MeanStd

__all__ = ["AttnBackbone", "attach", "capture_outputs", "find_stages"]

Level = int | str
Extractor = Literal["auto", "fx", "hooks"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_NAME = re.compile(
    r"^(?P<backbone>.+)_att(?P<n>[1-9][0-9]*)(?:_(?P<combine>concat|indep))?_(?P<compat>pc|dp|add)$"
)
_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


# ---------------------------------------------------------------------------------------------- taps


@contextlib.contextmanager
def capture_outputs(module: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Records the outputs of the submodules ``names`` of ``module`` while the ``with`` block runs.

    The forward hooks exist only inside the block and are removed however it ends; errors propagate.
    A submodule called more than once keeps its last output.

    Yields:
        A dict, filled during forward passes inside the block: name -> output tensor.
    """
    layers = dict(module.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            handles.append(layers[name].register_forward_hook(_recorder(outputs, name)))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _recorder(outputs: dict[str, Any], name: str) -> Callable[..., None]:
    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        outputs.pop(name, None)  # re-insert, so that the order is that of the last completion
        outputs[name] = output

    return hook


class _Taps(nn.Module):
    """Runs a backbone and returns the outputs of the selected layers, in ``select`` order."""

    def select_outputs(self, names: Sequence[str]) -> None:
        raise NotImplementedError


class _TimmFeatureTaps(_Taps):
    """A timm ``features_only`` model: it returns every stage of its ``feature_info``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        feature_info: Any = net.feature_info
        self.names = [str(info["module"]) for info in feature_info.get_dicts()]
        self.index: list[int] = []

    def select_outputs(self, names: Sequence[str]) -> None:
        self.index = [self.names.index(n) for n in names]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.net(x)
        if isinstance(feats, dict):
            feats = list(feats.values())
        return [feats[i] for i in self.index]


class _TimmIntermediateTaps(_Taps):
    """A timm classifier, run through ``forward_intermediates`` after its head is pruned."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        timm_model: Any = model
        self.names = [str(info["module"]) for info in timm_model.feature_info]
        self.all_indices = timm_model.prune_intermediate_layers(list(range(len(self.names))), prune_norm=True)
        self.model = model
        self.index: list[int] = []

    def select_outputs(self, names: Sequence[str]) -> None:
        self.index = [self.names.index(n) for n in names]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = cast(Any, self.model).forward_intermediates(
            x, indices=self.all_indices, intermediates_only=True
        )
        return [feats[i] for i in self.index]


class _FxTaps(_Taps):
    """A traceable model cut after its last needed layer by torchvision's ``create_feature_extractor``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._source: list[nn.Module] = [model]  # a plain list: not a submodule, not in the state dict
        self.graph: nn.Module | None = None
        self.names: list[str] = []

    def select_outputs(self, names: Sequence[str]) -> None:
        from torchvision.models.feature_extraction import create_feature_extractor

        self.names = list(names)
        self.graph = create_feature_extractor(
            self._source[0], return_nodes={n: n for n in dict.fromkeys(names)}
        )
        self._source.clear()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        assert self.graph is not None, "select_outputs() runs in the constructor"
        out = self.graph(x)
        return [out[n] for n in self.names]


class _HookTaps(_Taps):
    """Any model, run whole; the selected layers' outputs are recorded by temporary forward hooks."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names: list[str] = []

    def select_outputs(self, names: Sequence[str]) -> None:
        self.names = list(names)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        with capture_outputs(self.model, self.names) as out:
            self.model(x)
        missing = [n for n in self.names if n not in out]
        if missing:
            raise RuntimeError(f"layers {missing} did not run in the backbone's forward pass")
        return [out[n] for n in self.names]


# ------------------------------------------------------------------------------------ stage discovery


def _probe(model: nn.Module, img_size: int) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """One forward pass in eval mode without gradients: name -> {channels, stride, shape} of every module
    with a 4-D output, and the completion order of all modules that ran."""
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    names = [n for n, _ in model.named_modules() if n]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture_outputs(model, names) as out:
            model(torch.zeros(1, 3, img_size, img_size, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    layers: dict[str, dict[str, Any]] = {}
    for name, value in out.items():
        if isinstance(value, torch.Tensor) and value.dim() == 4:
            h = value.shape[2]
            stride = img_size / h
            layers[name] = {
                "channels": int(value.shape[1]),
                "stride": int(stride) if stride.is_integer() else round(stride, 2),
                "shape": tuple(value.shape[2:]),
            }
    return layers, list(out)


def find_stages(model: nn.Module, img_size: int = 224) -> list[dict[str, Any]]:
    """The stages of a CNN, found by one probe forward pass (see the module docstring).

    Args:
        model: any module taking (1, 3, img_size, img_size) images.
        img_size: the probe's side; stages must have distinct resolutions at this size.

    Returns:
        One dict per stage, shallowest first: ``name`` (a module name), ``channels``, ``stride``.
    """
    layers, order = _probe(model, img_size)
    return _stages(model, layers, order)


def _stages(model: nn.Module, layers: dict[str, dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    rank = {name: i for i, name in enumerate(order)}
    modules = dict(model.named_modules())

    def children(prefix: str) -> list[str]:
        mod = modules[prefix] if prefix else model
        names = [f"{prefix}.{c}" if prefix else c for c, _ in mod.named_children()]
        return sorted((n for n in names if n in rank), key=rank.__getitem__)

    def sequence(prefix: str) -> list[str]:
        seq: list[str] = []
        for name in children(prefix):
            shapes = {layers[c]["shape"] for c in children(name) if c in layers}
            # A container spanning several downsamplings (VGG's ``features``) is opened; one that
            # downsamples once (a ResNet stage, a ConvNeXt downsample layer) is a unit.
            seq.extend(sequence(name) if len(shapes) > 2 else [name])
        return seq

    trunk: list[str] = []
    for name in sequence(""):
        if isinstance(modules[name], _POOLS) or name not in layers:
            break  # the head starts at the global pooling or the first non-spatial output
        trunk.append(name)
    stages = []
    for i, name in enumerate(trunk):
        if i + 1 == len(trunk) or layers[trunk[i + 1]]["shape"] != layers[name]["shape"]:
            stages.append(
                {"name": name, "channels": layers[name]["channels"], "stride": layers[name]["stride"]}
            )
    return stages


def _is_timm_features(model: nn.Module) -> bool:
    from timm.models import FeatureInfo

    return isinstance(getattr(model, "feature_info", None), FeatureInfo)


def _is_timm_classifier(model: nn.Module) -> bool:
    return (
        type(model).__module__.startswith("timm.")
        and isinstance(getattr(model, "feature_info", None), list)
        and hasattr(model, "forward_intermediates")
    )


def _build_taps(
    backbone: nn.Module, img_size: int, extractor: Extractor
) -> tuple[_Taps, list[dict[str, Any]], dict[str, dict[str, Any]], list[str]]:
    """The taps module, the stages, all tappable layers (name -> info) and the layers in execution order."""
    if extractor not in ("auto", "fx", "hooks"):
        raise ValueError(f"unknown extractor {extractor!r}; choose one of auto, fx, hooks")
    if extractor == "auto" and (_is_timm_features(backbone) or _is_timm_classifier(backbone)):
        taps: _Taps
        if _is_timm_features(backbone):
            taps = _TimmFeatureTaps(backbone)
            infos = cast(Any, backbone).feature_info.get_dicts()
        else:
            taps = _TimmIntermediateTaps(backbone)
            infos = list(cast(Any, backbone).feature_info)
        stages = [
            {"name": str(d["module"]), "channels": int(d["num_chs"]), "stride": d["reduction"]} for d in infos
        ]
        layers = {s["name"]: s for s in stages}
        return taps, stages, layers, [s["name"] for s in stages]
    layers, order = _probe(backbone, img_size)
    stages = _stages(backbone, layers, order)
    if extractor == "auto":
        extractor = "fx" if type(backbone).__module__.startswith("torchvision.models") else "hooks"
    taps = _FxTaps(backbone) if extractor == "fx" else _HookTaps(backbone)
    return taps, stages, layers, order


def _resolve(level: Level, stages: list[dict[str, Any]], layers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    names = [s["name"] for s in stages]
    if isinstance(level, bool) or not isinstance(level, int | str):
        raise LTPAError(f"level {level!r} must be a stage index or a layer name; stages: {', '.join(names)}")
    if isinstance(level, int):
        if not -len(stages) <= level < len(stages):
            raise LTPAError(
                f"stage index {level} is out of range: the backbone has {len(stages)} stages ({', '.join(names)})"
            )
        return dict(stages[level])
    if level in layers:
        info = layers[level]
        return {"name": level, "channels": info["channels"], "stride": info["stride"]}
    raise LTPAError(f"the backbone has no tappable layer {level!r}; its stages are {', '.join(names)}")


# ------------------------------------------------------------------------------------------ the model


class AttnBackbone(LTPAModel):
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

        dim_g = glob["channels"]
        self.global_fc: nn.Linear | None = None
        if global_dim is not None:
            self.global_fc = nn.Linear(dim_g, global_dim)
            dim_g = global_dim
        self.attention = nn.ModuleList(
            [
                create_attention(
                    d["channels"], dim_g, compatibility, normalization, match=match, drop_rate=drop_rate
                )
                for d in attended
            ]
        )
        for attn in self.attention:
            _zero_scores(attn)  # type: ignore[arg-type]
        widths = [int(cast(LinearAttention, attn).out_channels) for attn in self.attention]
        self.head = AttentionHead(
            widths, num_classes, combine=combine, indep_mode=indep_mode, drop_rate=drop_rate
        )
        self.attn_info = [{**d, "descriptor": w} for d, w in zip(attended, widths)]

    # ``create_model`` records its kwargs for checkpoints; the pretrained flag only chooses initial weights,
    # which a checkpoint replaces, so it is left out and a checkpoint loads without the ImageNet weights.
    @property
    def model_kwargs(self) -> dict[str, Any]:
        return self.__dict__.get("_model_kwargs", {})

    @model_kwargs.setter
    def model_kwargs(self, kwargs: dict[str, Any]) -> None:
        self.__dict__["_model_kwargs"] = {k: v for k, v in kwargs.items() if k != "pretrained"}

    def global_feature(self, final: torch.Tensor) -> torch.Tensor:
        """``g`` from the final stage's output.

        Shape:
            - final: (B, C, H, W); returns (B, D), D = ``global_dim`` or C.
        """
        g = final.mean(dim=(2, 3))  # (B, C)
        return self.global_fc(g) if self.global_fc is not None else g

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        *local_feats, final = self.backbone(x)
        return final, [l for l, same in zip(local_feats, self._local_is_global) if not same]

    def _num_head_levels(self) -> int:
        return self._local_is_global.count(False)

    def _head(self, final: torch.Tensor, levels: list[torch.Tensor]) -> tuple[AttentionOutput, torch.Tensor]:
        others = iter(levels)
        local_feats = [final if same else next(others) for same in self._local_is_global]
        g = self.global_feature(final)  # (B, D)
        maps, descriptors = [], []
        for l, attn in zip(local_feats, self.attention):
            g_a, a = attn(l, g)  # (B, C_s), (B, H_s, W_s)
            descriptors.append(g_a)
            maps.append(a)
        feats = self.head.features(descriptors)  # (B, sum C_s)
        return AttentionOutput(self.head.logits(feats), maps, descriptors), feats

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.head.reset(num_classes)
        self.num_classes = num_classes


@torch.no_grad()
def _zero_scores(attn: LinearAttention) -> None:
    # A zero score layer makes every map uniform at the start: descriptors begin as global average pooling.
    if attn.score is not None:
        attn.score.weight.zero_()
        if attn.score.bias is not None:
            attn.score.bias.zero_()


def _normalisation(backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean/std the backbone's weights expect, or None for an unknown module."""
    cfg = getattr(backbone, "pretrained_cfg", None) or getattr(backbone, "default_cfg", None)
    if isinstance(cfg, dict) and "mean" in cfg and "std" in cfg:
        return tuple(cfg["mean"]), tuple(cfg["std"])
    if type(backbone).__module__.startswith("torchvision.models"):
        return IMAGENET_MEAN, IMAGENET_STD
    return None


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


def _parse(family: str, rest: str) -> tuple[str, int, str, str]:
    match = _NAME.match(rest)
    if match is None:
        raise LTPAError(
            f"cannot parse model {family}/{rest}: names look like {family}/<backbone>_att<N>[_concat|_indep]_<pc|dp|add>"
            f", e.g. {family}/resnet50_att2_pc"
        )
    return match["backbone"], int(match["n"]), match["combine"] or "concat", match["compat"]


def _unknown(family: str, name: str, known: list[str]) -> LTPAError:
    import difflib

    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "check the spelling"
    return LTPAError(f"{family} has no model {name!r}; {hint}")


def _family_builder(
    family: str, rest: str, make_backbone: Callable[[bool | str, dict[str, Any]], nn.Module]
) -> Callable[..., LTPAModel]:
    _, n, combine, compat = _parse(family, rest)

    def build(
        *,
        num_classes: int = 1000,
        img_size: int = 224,
        pretrained: bool | str = False,
        backbone_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> LTPAModel:
        fixed = {"levels", "compatibility", "combine"} & set(kwargs)
        if fixed:
            raise LTPAError(
                f"{', '.join(sorted(fixed))} is fixed by the model name {family}/{rest}; change the name"
            )
        backbone = make_backbone(pretrained, dict(backbone_kwargs or {}))
        return AttnBackbone(
            backbone,
            levels=tuple(range(-n, 0)),
            compatibility=compat,
            combine=combine,
            num_classes=num_classes,
            img_size=img_size,
            **kwargs,
        )

    return build


def _hub_checkpoint(url: str | None) -> Path | None:
    if not url:
        return None
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    return path if path.is_file() else None


def _check_weights_file(path: str) -> str:
    if not Path(path).is_file():
        raise LTPAError(
            f"pretrained weights file {path} does not exist; pass pretrained=True or an existing file"
        )
    return path


def cached_timm_weights(name: str) -> Path | None:
    """The local file of timm model ``name``'s pretrained weights (Hugging Face or torch hub cache), or None.

    Looks only at this machine's caches; never downloads.
    """
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in files:
            hit = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(hit, str):
                return Path(hit)
    return _hub_checkpoint(cfg.url if isinstance(cfg.url, str) else None)


def _timm_backbone(arch: str) -> Callable[[bool | str, dict[str, Any]], nn.Module]:
    import timm
    from timm.models import split_model_name_tag

    base, _ = split_model_name_tag(arch)
    if not timm.is_model(base):
        raise _unknown("timm", arch, timm.list_models())

    def make(pretrained: bool | str, kwargs: dict[str, Any]) -> nn.Module:
        if pretrained is False:
            return timm.create_model(arch, pretrained=False, features_only=True, **kwargs)
        if isinstance(pretrained, str):
            file = _check_weights_file(pretrained)
        else:
            found = cached_timm_weights(arch)
            if found is None:
                raise LTPAError(
                    f"no local pretrained weights for timm model {arch!r} (nothing is downloaded): fetch them once "
                    f"with `python -c \"import timm; timm.create_model('{arch}', pretrained=True)\"` where there is "
                    "internet (they land in the Hugging Face cache), or pass pretrained='/path/to/weights'"
                )
            file = str(found)
        return timm.create_model(
            arch, pretrained=True, pretrained_cfg_overlay={"file": file}, features_only=True, **kwargs
        )

    return make


def _tv_backbone(arch: str) -> Callable[[bool | str, dict[str, Any]], nn.Module]:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        raise _unknown("torchvision", arch, known)

    def make(pretrained: bool | str, kwargs: dict[str, Any]) -> nn.Module:
        if pretrained is False:
            return torchvision.models.get_model(arch, weights=None, **kwargs)
        if isinstance(pretrained, str):
            model = torchvision.models.get_model(arch, weights=None, **kwargs)
            file = _check_weights_file(pretrained)
            if file.endswith(".safetensors"):
                from safetensors.torch import load_file

                state = load_file(file)
            else:
                state = torch.load(file, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
            return model
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        if _hub_checkpoint(weights.url) is None:
            raise LTPAError(
                f"no local pretrained weights for torchvision model {arch!r} (nothing is downloaded): fetch them "
                f"once with `python -c \"import torchvision; torchvision.models.get_model('{arch}', "
                f"weights='DEFAULT')\"` where there is internet, or pass pretrained='/path/to/weights'"
            )
        return torchvision.models.get_model(arch, weights=weights, **kwargs)  # loads from the local cache

    return make


def _resolve_timm(rest: str) -> Callable[..., LTPAModel]:
    arch = _parse("timm", rest)[0]
    return _family_builder("timm", rest, _timm_backbone(arch))


def _resolve_tv(rest: str) -> Callable[..., LTPAModel]:
    arch = _parse("tv", rest)[0]
    return _family_builder("tv", rest, _tv_backbone(arch))


register_family("timm", _resolve_timm)
register_family("tv", _resolve_tv)
