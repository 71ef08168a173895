"""ltpa: "Learn To Pay Attention" (Jetley, Lord, Lee, Torr; ICLR 2018) in PyTorch.

Paper: https://arxiv.org/abs/1804.02391

    import ltpa
    model = ltpa.create_model("vgg_att2_concat_pc", num_classes=10)
    out = model.forward_attention(images)  # images in [0, 1], (B, 3, 32, 32)
    out.logits, out.maps, out.descriptors
"""

from __future__ import annotations

__version__ = "0.1.0"

from ltpa.attention import LinearAttention, create_attention
from ltpa.checkpoint import load_model
from ltpa.errors import LTPAError
from ltpa.models import AttentionOutput, LTPAModel, attach, create_model, list_models, model_info

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
