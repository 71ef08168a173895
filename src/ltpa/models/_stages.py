"""Stage discovery: the stages of a CNN found by one probe forward pass, and the levels a user names.

A stage is the last layer at one spatial resolution of the trunk, which ends at the first adaptive pooling or
non-spatial output (see :mod:`ltpa.models.attach`). :func:`find_stages` lists them; :func:`_resolve` turns a
level (a stage index or a layer name) into the layer's name, channels and stride.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ltpa.errors import LTPAError
from ltpa.models._taps import capture_outputs

__all__ = ["Level", "find_stages"]

Level = int | str
_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


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
