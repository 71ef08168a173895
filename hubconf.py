"""torch.hub entry points of ltpa ("Learn To Pay Attention", https://arxiv.org/abs/1804.02391).

    model = torch.hub.load("REPO_OR_PATH", "vgg_att2_concat_pc", num_classes=10)            # source="local"
    model = torch.hub.load("REPO_OR_PATH", "vgg_att2_concat_pc", pretrained="hf-hub:org/name")
    model = torch.hub.load("REPO_OR_PATH", "create_model", "timm/resnet50_att2_pc", num_classes=200)

Every registered name of ``ltpa.list_models()`` is an entry point taking the arguments of
``ltpa.create_model`` (``pretrained``, ``checkpoint_path``, model keyword arguments); ``create_model`` itself
is one too, for the ``timm/...`` and ``tv/...`` names. Nothing here downloads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

dependencies = ["torch", "timm"]

# torch.hub.load(PATH) must run PATH's code, not an ltpa installed elsewhere: put PATH's src/ first.
_SRC = os.path.join(os.path.dirname(os.path.realpath(__file__)), "src")
if os.path.isdir(os.path.join(_SRC, "ltpa")):
    _loaded = sys.modules.get("ltpa")
    if _loaded is None:
        sys.path.insert(0, _SRC)
    elif not os.path.realpath(str(_loaded.__file__)).startswith(os.path.join(_SRC, "ltpa") + os.sep):
        raise ImportError(
            f"torch.hub.load would run the ltpa already imported from {os.path.dirname(str(_loaded.__file__))} "
            f"rather than the code in {_SRC}; load it in a Python process that has not imported ltpa yet"
        )
import ltpa  # noqa: E402


def create_model(name: str, *args: Any, **kwargs: Any) -> ltpa.LTPAModel:
    """``ltpa.create_model(name, pretrained=False, checkpoint_path=None, **kwargs)``."""
    return ltpa.create_model(name, *args, **kwargs)


def _entry(name: str) -> Callable[..., ltpa.LTPAModel]:
    def entry(pretrained: Any = False, **kwargs: Any) -> ltpa.LTPAModel:
        return ltpa.create_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"``ltpa.create_model({name!r}, pretrained=False, checkpoint_path=None, **kwargs)``: "
        "pretrained may be a folder written by save_pretrained or an hf-hub:<org>/<name> id."
    )
    return entry


for _name in ltpa.list_models():
    globals()[_name] = _entry(_name)
del _name
