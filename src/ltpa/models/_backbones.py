"""Backbone resolution: the registered ``timm/...`` and ``tv/...`` names, the backbones they build and the
weights they load (only from this machine's caches or a given file; nothing is downloaded).

See :mod:`ltpa.models.attach` for the naming scheme and ``pretrained``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ltpa.errors import LTPAError
from ltpa.models._base import LTPAModel

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "cached_timm_weights"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_NAME = re.compile(
    r"^(?P<backbone>.+)_att(?P<n>[1-9][0-9]*)(?:_(?P<combine>concat|indep))?_(?P<compat>pc|dp|add)$"
)


def _normalisation(backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean/std the backbone's weights expect, or None for an unknown module."""
    cfg = getattr(backbone, "pretrained_cfg", None) or getattr(backbone, "default_cfg", None)
    if isinstance(cfg, dict) and "mean" in cfg and "std" in cfg:
        return tuple(cfg["mean"]), tuple(cfg["std"])
    if type(backbone).__module__.startswith("torchvision.models"):
        return IMAGENET_MEAN, IMAGENET_STD
    return None


def _parse(family: str, rest: str) -> tuple[str, int, str, str]:
    match = _NAME.match(rest)
    if match is None:
        raise LTPAError(
            f"cannot parse model {family}/{rest}: names look like {family}/<backbone>_att<N>[_concat|_indep]_<pc|dp|add>"
            f", e.g. {family}/resnet50_att2_pc"
        )
    return match["backbone"], int(match["n"]), match["combine"] or "concat", match["compat"]


def _unknown(family: str, name: str, known: list[str]) -> LTPAError:
    from ltpa.utils import did_you_mean

    hint = did_you_mean(name, known, n=5) or "check the spelling"
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
        if "width" in kwargs:
            raise LTPAError(
                f"{family}/{rest} keeps its backbone's own channel widths, so width does not apply (only ltpa's "
                "vgg and resnet164 models take it); drop --width, or pick a smaller backbone"
            )
        fixed = {"levels", "compatibility", "combine"} & set(kwargs)
        if fixed:
            raise LTPAError(
                f"{', '.join(sorted(fixed))} is fixed by the model name {family}/{rest}; change the name"
            )
        from ltpa.models.attach import AttnBackbone  # attach registers these builders: import it at call time

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


def _check_loaded(backbone: nn.Module, file: str) -> None:
    """Refuses a backbone whose weights, as loaded from ``file``, hold an inf or NaN."""
    from ltpa.checkpoint import check_finite

    check_finite(backbone.state_dict(), file)


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
        backbone = timm.create_model(
            arch, pretrained=True, pretrained_cfg_overlay={"file": file}, features_only=True, **kwargs
        )
        _check_loaded(backbone, file)
        return backbone

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
                from ltpa.checkpoint import read_weights

                state = read_weights(file)
            else:
                state = torch.load(file, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
            _check_loaded(model, file)
            return model
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        if _hub_checkpoint(weights.url) is None:
            raise LTPAError(
                f"no local pretrained weights for torchvision model {arch!r} (nothing is downloaded): fetch them "
                f"once with `python -c \"import torchvision; torchvision.models.get_model('{arch}', "
                f"weights='DEFAULT')\"` where there is internet, or pass pretrained='/path/to/weights'"
            )
        model = torchvision.models.get_model(arch, weights=weights, **kwargs)  # loads from the local cache
        _check_loaded(model, str(_hub_checkpoint(weights.url)))
        return model

    return make


def _resolve_timm(rest: str) -> Callable[..., LTPAModel]:
    arch = _parse("timm", rest)[0]
    return _family_builder("timm", rest, _timm_backbone(arch))


def _resolve_tv(rest: str) -> Callable[..., LTPAModel]:
    arch = _parse("tv", rest)[0]
    return _family_builder("tv", rest, _tv_backbone(arch))
