"""Taps: how :class:`ltpa.models.AttnBackbone` reads the outputs of a backbone's stages.

A tap module runs the backbone and returns the outputs of the selected layers: through timm's
``features_only`` models or ``forward_intermediates``, a torchvision feature extractor
(``create_feature_extractor``), or temporary forward hooks on any module (:func:`capture_outputs`).
:func:`_build_taps` picks one for a backbone (see :mod:`ltpa.models.attach`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, cast

import torch
from torch import nn

__all__ = ["Extractor", "capture_outputs"]

Extractor = Literal["auto", "fx", "hooks"]


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
    from ltpa.models._stages import (
        _probe,
        _stages,
    )  # stage discovery probes with capture_outputs (this module)

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
