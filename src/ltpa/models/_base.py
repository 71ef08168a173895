"""What every ltpa model shares: the output contract, layer builders and the official initialisation.

Paper: "Learn To Pay Attention", https://arxiv.org/abs/1804.02391 (method §2 and §3.6 for the details).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, cast

import torch
from torch import nn

from ltpa.attention import scale_grad
from ltpa.errors import LTPAError
from ltpa.layers import Dropout
from ltpa.preprocess import build_preprocess

__all__ = [
    "AttentionOutput",
    "LTPAModel",
    "TrunkFeatures",
    "canonical_names",
    "conv_bn_relu",
    "init_official",
    "last_conv",
    "normalized_input",
    "scaled",
]

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


def last_conv(module: nn.Module) -> nn.Conv2d:
    """The last ``nn.Conv2d`` that ``module`` registers (in ``module.modules()`` order).

    Raises:
        LTPAError: when ``module`` has no convolution.
    """
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise LTPAError(f"{type(module).__name__} has no convolution for Grad-CAM to explain")
    return convs[-1]


def canonical_names(module: nn.Module) -> dict[nn.Module, str]:
    """Every submodule's name, with the prefix replaced by the layer's own tag where one has ``ltpa_name``.

    The convolutional layers of the VGG family carry their paper name (``conv1`` .. ``conv13``), so a layer has
    the same canonical name in every model that contains it: ``conv7.0`` is conv7's convolution in VGG,
    VGG-GAP and VGG-att2 alike, whatever module path the model keeps it under.
    """
    names: dict[nn.Module, str] = {}

    def walk(m: nn.Module, name: str) -> None:
        name = getattr(m, "ltpa_name", None) or name
        names.setdefault(m, name)
        for child_name, child in m.named_children():
            walk(child, f"{name}.{child_name}" if name else child_name)

    walk(module, "")
    return names


def _name_generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


@torch.no_grad()
def init_official(module: nn.Module, *, zero_linear_bias: bool = False, seed: int | None = None) -> None:
    """The official initialisation (method §3.6).

    Convolutions: ``N(0, sqrt(2 / (k*k*C_out)))`` ("MSR", Kaiming-normal fan-out), bias 0. Linear layers:
    Torch's default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weight and bias (bias 0 for the ResNets).
    BatchNorm: weight ``U(0, 1)``, bias 0. Attention blocks then apply their ablation mode
    (``LinearAttention.apply_mode``).

    Args:
        module: the model or layer to initialise.
        zero_linear_bias: zero the linear biases (the ResNet code).
        seed: ``None`` draws from the global random stream in construction order (the official code). An
            integer draws every layer from its own generator keyed on ``(seed, canonical name)``
            (:func:`canonical_names`): two models that share a layer start with equal weights there, whatever
            else they contain; this pairs the arms of an ablation.
    """
    names = canonical_names(module) if seed is not None else {}
    for m in module.modules():
        gen = _name_generator(seed, names[m]) if seed is not None else None
        if isinstance(m, nn.Conv2d):
            k_h, k_w = m.kernel_size
            m.weight.normal_(0.0, math.sqrt(2.0 / (k_h * k_w * m.out_channels)), generator=gen)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.in_features)
            m.weight.uniform_(-bound, bound, generator=gen)
            if m.bias is not None:
                if zero_linear_bias:
                    m.bias.zero_()
                else:
                    m.bias.uniform_(-bound, bound, generator=gen)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            if m.weight is not None:
                m.weight.uniform_(0.0, 1.0, generator=gen)
            if m.bias is not None:
                m.bias.zero_()
    for m in module.modules():
        apply_mode = getattr(m, "apply_mode", None)
        if callable(apply_mode):
            apply_mode()


@contextmanager
def normalized_input(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside this block ``model(x)`` takes images already passed through ``model.preprocess``.

    Training with ``augment_space="normalized"`` augments the normalised images, as the official code (whose data
    files held whitened images) did; the model must then skip its own normalisation (docs/fidelity.md row 2).
    """
    if not enabled or not isinstance(model, LTPAModel):
        yield
        return
    model._input_normalized = True
    try:
        yield
    finally:
        model._input_normalized = False


class TrunkFeatures(torch.Tensor):
    """What ``forward_features`` returns when the head attends more than the deepest map.

    A tensor: the deepest trunk map (B, C, H, W), usable as timm's ``forward_features`` output is (pool it,
    read its shape). It carries in ``levels`` the shallower attended maps, shallowest first, which
    ``forward_head`` needs to recompute attention (the head of an attention model reads several levels,
    method §1.6). Any operation on it returns a plain tensor without ``levels``: pass it to ``forward_head``
    unchanged.
    """

    levels: tuple[torch.Tensor, ...]
    # No subclass propagation: results of operations are plain tensors.
    __torch_function__ = torch._C._disabled_torch_function_impl  # type: ignore[assignment]

    @staticmethod
    def wrap(final: torch.Tensor, levels: list[torch.Tensor]) -> torch.Tensor:
        """``final`` carrying ``levels``, or ``final`` itself when there are none."""
        if not levels:
            return final
        out = final.as_subclass(TrunkFeatures)
        out.levels = tuple(levels)
        return out


class LTPAModel(nn.Module):
    """Base class of the model contract, which follows timm's conventions with timm's meanings.

    * ``model(x)`` takes images in [0, 1], (B, 3, H, W), and returns logits (B, K); the input normalisation
      (``self.preprocess``) is part of the model.
    * ``model.forward_attention(x)`` returns :class:`AttentionOutput`.
    * ``model.forward_features(x)`` returns the unpooled feature map of the trunk (B, C, H, W), as timm's
      does; ``model.forward_head(f, pre_logits=False)`` turns it into logits, so that
      ``forward_head(forward_features(x)) == model(x)``. With ``pre_logits=True`` it returns the input of the
      final linear classifier (B, ``num_features``): the feature used for transfer (method §4.2).
    * ``model.attn_info``: one dict per attended level with ``name``, ``channels`` and ``stride`` (relative to
      the input), shallowest first, as timm's ``feature_info``.
    * ``num_features``, ``pretrained_cfg``, ``get_classifier()``, ``reset_classifier(num_classes)``,
      ``save_pretrained(dir)`` and ``from_pretrained(dir_or_id)`` (:mod:`ltpa.hub`).

    Subclasses implement ``_features(x) -> (final, levels)`` (the trunk on normalised input: the deepest map
    and the shallower maps the head attends) and ``_head(final, levels) -> (AttentionOutput, pre_logits)``.

    What evaluation reads (:mod:`ltpa.evaluate`) is declared by the model, not guessed from its class:
    ``map_kind`` names what ``forward_attention``'s maps are, ``gradcam_layer()`` the layer Grad-CAM explains.
    """

    map_kind: ClassVar[str] = "attention"
    """What ``forward_attention(x).maps`` hold: ``"attention"`` (attention maps; also the models without any
    maps) or ``"cam"`` (class activation maps, VGG-GAP)."""
    gradcam_level: ClassVar[str] = ""
    """The paper's name of the layer ``gradcam_layer()`` returns (``conv13``, ``stage3``), under which Grad-CAM
    maps are reported beside the attention maps of the same layer; empty: its module name."""

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
        self.preprocess_name = preprocess
        self.attn_info = []
        self.grad_averaging = False
        self._input_normalized = False

    def _branch(self, x: torch.Tensor, consumers: int) -> torch.Tensor:
        """Marks one of ``consumers`` uses of ``x``: with code-faithful gradient averaging on, the gradient
        arriving through this use is divided by ``consumers`` (method §3.3)."""
        return scale_grad(x, 1.0 / consumers) if self.grad_averaging else x

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raise NotImplementedError

    def _head(self, final: torch.Tensor, levels: list[torch.Tensor]) -> tuple[AttentionOutput, torch.Tensor]:
        raise NotImplementedError

    def _forward(self, x: torch.Tensor) -> tuple[AttentionOutput, torch.Tensor]:
        return self._head(*self._features(x))

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
        """The unpooled feature map of the trunk for images ``x`` in [0, 1], as timm's ``forward_features``.

        The trunk ends at the deepest attended map (conv13, ResNet stage 3, the backbone's final stage); the
        global path and the attention are part of the head. When the head also attends shallower maps, the
        result is a :class:`TrunkFeatures` carrying them, so that ``forward_head`` can recompute attention.

        Shape:
            - x: (B, 3, H, W); returns (B, C, H_f, W_f).
        """
        self._check_input(x)
        final, levels = self._features(self.preprocess(x))
        return TrunkFeatures.wrap(final, levels)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits from ``forward_features``' output: ``forward_head(forward_features(x)) == model(x)``.

        Args:
            x: the output of :meth:`forward_features`, unchanged.
            pre_logits: return the input of the final linear classifier instead of the logits.

        Returns:
            Logits (B, K), or with ``pre_logits`` the (B, ``num_features``) pooled features (for attention
            models, the concatenated descriptors after their BN-ReLU; the transfer feature of method §4.2).

        Raises:
            LTPAError: when the head needs the shallower maps and ``x`` does not carry them (it is not the
                unchanged output of ``forward_features``).
        """
        levels = list(x.levels) if isinstance(x, TrunkFeatures) else []
        final = x.as_subclass(torch.Tensor) if isinstance(x, TrunkFeatures) else x
        if len(levels) != self._num_head_levels():
            raise LTPAError(
                f"forward_head needs the {self._num_head_levels()} shallower attended maps that "
                "forward_features attaches to its output; pass forward_features' output unchanged"
            )
        out, feats = self._head(final, levels)
        return feats if pre_logits else out.logits

    def _num_head_levels(self) -> int:
        """How many maps besides the deepest one the head reads."""
        return 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self._input_normalized:  # inside normalized_input(): x went through self.preprocess already
            return self._forward(x)[0].logits
        return self._forward(self.preprocess(x))[0].logits

    @property
    def num_features(self) -> int:
        """Width of the pre-logits features (``forward_head(f, pre_logits=True)``): the classifier's input."""
        fc = self._classifier()
        layers = list(fc) if isinstance(fc, nn.ModuleList) else [fc]
        return sum(int(cast(nn.Linear, layer).in_features) for layer in layers)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's ``pretrained_cfg``: what a data pipeline needs to feed the model, and where its weights
        came from.

        The normalisation is inside the model, so ``mean`` and ``std`` are 0 and 1 (feed images in [0, 1]);
        ``preprocess`` names the preset inside. ``license`` is the weights' licence (``"unknown"`` unless the
        weights' ``config.json`` sets it); ``code_license`` is that of ltpa (MIT). ``classes`` are the class
        names when the weights carry them. The result is a fresh dict; assign a dict to update it.
        """
        classifier = self._classifier()
        prefix = next((name for name, mod in self.named_modules() if mod is classifier), "")
        cfg: dict[str, Any] = {
            "architecture": getattr(self, "model_name", type(self).__name__),
            "input_size": (3, self.img_size, self.img_size),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "mean": (0.0, 0.0, 0.0),
            "std": (1.0, 1.0, 1.0),
            "preprocess": self.preprocess_name,
            "num_classes": self.num_classes,
            "classes": None,
            "classifier": prefix,
            "license": "unknown",
            "code_license": "MIT",
        }
        cfg.update(self.__dict__.get("_pretrained_cfg", {}))
        cfg["num_classes"] = self.num_classes
        cfg["input_size"] = (3, self.img_size, self.img_size)
        if cfg["classes"] is not None and len(cfg["classes"]) != self.num_classes:
            cfg["classes"] = None  # the classifier was reset
        return cfg

    @pretrained_cfg.setter
    def pretrained_cfg(self, cfg: dict[str, Any]) -> None:
        self.__dict__["_pretrained_cfg"] = dict(cfg)

    def _classifier(self) -> nn.Module:
        # For the properties: an AttributeError says "no such attribute" to hasattr, which TorchScript's
        # tracer calls on every attribute of a module.
        try:
            return self.get_classifier()
        except NotImplementedError as err:
            raise AttributeError(f"{type(self).__name__} does not implement get_classifier") from err

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name for :attr:`pretrained_cfg`."""
        return self.pretrained_cfg

    def gradcam_layer(self) -> nn.Module:
        """The module whose output Grad-CAM explains: the last convolutional block of the trunk.

        Default: the last ``nn.Conv2d`` the model registers.

        Raises:
            LTPAError: when the model has no convolution.
        """
        return last_conv(self)

    def get_classifier(self) -> nn.Module:
        """The final linear layer(s), which ``reset_classifier`` replaces."""
        raise NotImplementedError

    def head_modules(self) -> list[str]:
        """Names of the modules that make up the whole classifier after the pooled features (the official
        code's "match" block): what ``--init-from`` with ``init_from_head="fresh"`` leaves at its initial
        values. Default: the final linear layer(s)."""
        clf = self.get_classifier()
        return [name for name, m in self.named_modules() if m is clf]

    def reset_classifier(self, num_classes: int) -> None:
        """Replaces the final linear layer(s) by fresh ones for ``num_classes`` classes (the CUB recipe
        initialises everything else from a CIFAR-100 model, method §2.3)."""
        raise NotImplementedError

    def _set_num_classes(self, num_classes: int) -> None:
        """Records a new class count for ``reset_classifier``, in ``num_classes`` and in the recorded
        ``model_kwargs``, so that checkpoints and ``save_pretrained`` rebuild the new classifier."""
        self.num_classes = num_classes
        kwargs = getattr(self, "model_kwargs", None)
        if kwargs is not None:
            self.model_kwargs = {**kwargs, "num_classes": num_classes}

    def save_pretrained(self, directory: str | os.PathLike[str], **card: Any) -> Path:
        """Writes ``model.safetensors``, ``config.json`` and a ``README.md`` model card to ``directory``.

        See :func:`ltpa.hub.save_pretrained` (``card`` is passed on).
        """
        from ltpa.hub import save_pretrained

        return save_pretrained(self, directory, **card)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike[str], **kwargs: Any) -> LTPAModel:
        """The model saved by :meth:`save_pretrained` in a local folder or a Hugging Face Hub repository.

        See :func:`ltpa.hub.from_pretrained`. Called on a subclass, the saved model must be one of it.
        """
        from ltpa.hub import from_pretrained

        model = from_pretrained(source, **kwargs)
        if not isinstance(model, cls):
            raise LTPAError(
                f"{source} holds a {type(model).__name__} ({model.model_name}), not a {cls.__name__}; "
                "load it with ltpa.LTPAModel.from_pretrained"
            )
        return model
