"""ltpa: "Learn To Pay Attention" (Jetley, Lord, Lee, Torr; ICLR 2018) in PyTorch.

Paper: https://arxiv.org/abs/1804.02391

    import ltpa
    model = ltpa.create_model("vgg_att2_concat_pc", num_classes=10)
    out = model.forward_attention(images)  # images in [0, 1], (B, 3, 32, 32)
    out.logits, out.maps, out.descriptors
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ltpa.errors import LTPAError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ltpa.attention import LinearAttention, create_attention
    from ltpa.checkpoint import load_model
    from ltpa.models import AttentionOutput, LTPAModel, create_model, list_models, model_info
    from ltpa.models.attach import attach

# Imported on first use (PEP 562), so that `import ltpa` and the command line start without loading PyTorch:
# the CLI can then answer --help quickly and turn a Ctrl-C during start-up into a clean exit.
_LAZY = {
    "LinearAttention": "ltpa.attention",
    "create_attention": "ltpa.attention",
    "load_model": "ltpa.checkpoint",
    "AttentionOutput": "ltpa.models",
    "LTPAModel": "ltpa.models",
    "attach": "ltpa.models",
    "create_model": "ltpa.models",
    "list_models": "ltpa.models",
    "model_info": "ltpa.models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ltpa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "AttentionOutput",
    "LTPAError",
    "LTPAModel",
    "LinearAttention",
    "__version__",
    "attach",
    "create_attention",
    "create_model",
    "list_models",
    "load_model",
    "model_info",
]
