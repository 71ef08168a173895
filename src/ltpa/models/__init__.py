"""The model zoo of "Learn To Pay Attention" (method §7) behind one registry.

Names: ``vgg``, ``vgg_gap``, ``vgg_pan``, ``vgg_att{1,2,3}_{concat,indep}_{pc,dp,add}``, ``resnet164``,
``resnet164_att2_{concat,indep}_{pc,dp,add}``. ``add`` is the additive compatibility (not in the paper).
Any timm or torchvision CNN with attention: ``timm/<model>_att<N>[_concat|_indep]_<pc|dp|add>`` and
``tv/<model>_att<N>[_concat|_indep]_<pc|dp|add>`` (see :mod:`ltpa.models.attach`).
"""

from __future__ import annotations

import functools
from typing import Any

from ltpa.errors import LTPAError
from ltpa.models._base import AttentionOutput, LTPAModel, TrunkFeatures
from ltpa.models._head import AttentionHead, AttentionModel
from ltpa.models._registry import check_model_kwargs, create_model, list_models, register_model
from ltpa.models.attach import AttnBackbone, attach
from ltpa.models.resnet import PreActResNet
from ltpa.models.vgg import LEVELS, VGG, VGGGAP, VGGPAN, AttnVGG

__all__ = [
    "VGG",
    "VGGGAP",
    "VGGPAN",
    "AttentionHead",
    "AttentionModel",
    "AttentionOutput",
    "AttnBackbone",
    "AttnVGG",
    "LTPAModel",
    "PreActResNet",
    "TrunkFeatures",
    "attach",
    "check_model_kwargs",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]


def _fixed(cls: type[LTPAModel], **fixed: Any) -> Any:
    @functools.wraps(cls)
    def build(**kwargs: Any) -> LTPAModel:
        clash = set(fixed) & set(kwargs)
        if clash:
            raise LTPAError(f"{', '.join(sorted(clash))} is fixed by the model name; pick another model name")
        return cls(**fixed, **kwargs)

    return build


register_model("vgg", _fixed(VGG))
register_model("vgg_gap", _fixed(VGGGAP))
register_model("vgg_pan", _fixed(VGGPAN))
register_model("resnet164", _fixed(PreActResNet, depth=164))
for _combine in ("concat", "indep"):
    for _compat in ("pc", "dp", "add"):
        for _n, _levels in LEVELS.items():
            register_model(
                f"vgg_att{_n}_{_combine}_{_compat}",
                _fixed(AttnVGG, attention_levels=_levels, combine=_combine, compatibility=_compat),
            )
        register_model(
            f"resnet164_att2_{_combine}_{_compat}",
            _fixed(PreActResNet, depth=164, attention_levels=(2, 3), combine=_combine, compatibility=_compat),
        )


def model_info(name: str, **kwargs: Any) -> dict[str, Any]:
    """Parameter count and attended levels of a model, built on the meta device (no memory, no init cost)."""
    import torch

    with torch.device("meta"):
        model = create_model(name, **kwargs)
    return {
        "name": name,
        "params": sum(p.numel() for p in model.parameters()),
        "levels": [dict(level) for level in model.attn_info],
        "num_classes": model.num_classes,
        "img_size": model.img_size,
    }
