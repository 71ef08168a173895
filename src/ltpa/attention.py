"""The trainable attention block of "Learn To Pay Attention" (Jetley et al., ICLR 2018).

Paper: https://arxiv.org/abs/1804.02391

Every spatial local feature ``l_i`` of a convolutional layer is scored against a global image feature
``g`` (compatibility), the scores are normalised over all positions into an attention map ``a``, and the
attention-pooled descriptor ``g_a = sum_i a_i l_i`` is what the classifier sees (method §1.2-1.5).

The block is usable on its own in any network::

    attn = LinearAttention(local_channels=256, global_channels=512)
    g_a, a = attn(l, g)  # (B, 256), (B, H, W)
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ltpa.layers import Dropout

__all__ = [
    "ATTENTION_MODES",
    "COMPATIBILITIES",
    "MATCHES",
    "NORMALIZATIONS",
    "LinearAttention",
    "ScaleGrad",
    "create_attention",
    "scale_grad",
]

Compatibility = Literal["pc", "dp", "add"]
Normalization = Literal["softmax", "sigmoid"]
Match = Literal["global", "local"]

COMPATIBILITIES: tuple[str, ...] = ("pc", "dp", "add")
NORMALIZATIONS: tuple[str, ...] = ("softmax", "sigmoid")
MATCHES: tuple[str, ...] = ("global", "local")
# Ablation controls with the learned block's parameters, FLOPs and descriptor width (see LinearAttention).
ATTENTION_MODES: tuple[str, ...] = ("learned", "uniform", "frozen", "detached", "from_g")


def _pointwise(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 convolution as a channel contraction: the same maths as ``conv(x)``, but on CPUs the generic
    convolution kernels are many times slower for the 1-channel score maps used here."""
    out = torch.einsum("bchw,oc->bohw", x, conv.weight[:, :, 0, 0])  # (B, O, H, W)
    if conv.bias is not None:
        out = out + conv.bias[None, :, None, None]
    return out


def _check_choice(kind: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(valid)}")


class LinearAttention(nn.Module):
    """Attention over the positions of one local feature map, steered by a global feature.

    Compatibility functions (method §1.2 and one beyond the paper):

    * ``"pc"`` (parametrised): ``c_i = <u, l_i + g>`` with a learned ``u``, computed as in the official code
      by a 1x1 convolution with bias over ``l + g``.
    * ``"dp"`` (dot product): ``c_i = <l_i, g>``, no parameters.
    * ``"add"`` (additive, not in the paper): ``c_i = <u, relu(W_l l_i + W_g g)>``. Under ``pc`` with a softmax
      the term ``<u, g>`` is the same at every position and cancels (method §1.7): the map cannot depend on
      ``g`` and the global path receives no gradient. The nonlinearity between ``l_i`` and ``g`` here lets the
      global feature really act as a query that steers the softmax map.

    Under ``pc`` + ``softmax`` that per-image constant is still computed (so the global path's batch-norm
    statistics update as in the official code) but enters the scores with weight zero: the map is the same
    as with the term, and the exact zero gradient of the global path (method §1.7) is exactly zero in floating
    point too, instead of rounding noise. Weight decay still reaches those parameters, as in the official code.

    Normalisations (method §1.4): ``"softmax"`` over all H*W positions (the paper: weights sum to 1 and the
    descriptor is a convex combination), or ``"sigmoid"``: an independent gate per position followed by a
    spatial average (as some reimplementations do).

    Matching dimensions when ``local_channels != global_channels`` (method §1.3):

    * ``match="global"`` (official default, variant B): ``g -> BN1d -> ReLU -> Dropout -> Linear(D -> C)``
      and the descriptor has the local width C.
    * ``match="local"`` (variant C): ``l`` is projected up by a 1x1 convolution (with bias) to D, ``g`` passes
      ``BN1d -> ReLU -> Dropout``, and the descriptor has width D.

    Modes, for ablations that isolate *learned* attention (same parameters, FLOPs and descriptor width):

    * ``"learned"``: the block of the paper.
    * ``"uniform"``: the score parameters (``u`` and its bias, or the ``add`` scorer) are fixed at zero and the
      scores multiplied by zero, so the map is exactly uniform and the descriptor is the spatial mean of ``l``
      (uniform pooling in the same network).
    * ``"frozen"``: every parameter of the block keeps its initial value (``requires_grad=False``): the map
      still depends on the image but is not learned. Batch-norm statistics inside the projection still update.
      The trunk can still shape the map through it, and under ``dp`` (no parameters when C == D) ``"frozen"`` is
      the learned model itself.
    * ``"detached"``: the map gets no training signal at all: the block's parameters are frozen and the scores are
      computed from detached copies of ``l`` and ``g``, so the loss reaches the trunk only through the pooled
      descriptor. This is the untrained-attention control for every compatibility, ``dp`` included (its query
      ``g`` then stays what the initial global path makes of the learned trunk features).
    * ``"from_g"``: the map is computed (and returned) as usual, but the descriptor handed on is the matched
      global feature ``g`` instead of ``sum_i a_i l_i``: the classifier sees the trunk's global feature; the
      block's parameters are frozen, since nothing downstream depends on them.

    The zeroing and freezing happen in :meth:`apply_mode`, which the model initialisation calls after it has
    drawn the weights (``ltpa.models.init_official``).

    Args:
        local_channels: channels C of the local feature map.
        global_channels: width D of the global feature.
        compatibility: ``"pc"``, ``"dp"`` or ``"add"``.
        normalization: ``"softmax"`` or ``"sigmoid"``.
        match: which side is projected when C != D: ``"global"`` or ``"local"``.
        drop_rate: dropout on the global feature inside the projection (official: 0.5).
        attn_channels: hidden width of the ``"add"`` compatibility (default: the matched width).
        mode: ``"learned"``, ``"uniform"``, ``"frozen"``, ``"detached"`` or ``"from_g"`` (see above).

    Shape:
        - local: (B, C, H, W); global: (B, D).
        - returns ``(descriptor, attn_map)``: (B, C_out) and (B, H, W), with C_out = C, or D under
          ``match="local"`` when C != D.
    """

    def __init__(
        self,
        local_channels: int,
        global_channels: int,
        *,
        compatibility: Compatibility = "pc",
        normalization: Normalization = "softmax",
        match: Match = "global",
        drop_rate: float = 0.5,
        attn_channels: int | None = None,
        mode: str = "learned",
    ) -> None:
        super().__init__()
        _check_choice("compatibility", compatibility, COMPATIBILITIES)
        _check_choice("attention mode", mode, ATTENTION_MODES)
        self.mode = mode
        _check_choice("normalization", normalization, NORMALIZATIONS)
        _check_choice("match", match, MATCHES)
        self.compatibility = compatibility
        self.normalization = normalization
        self.match = match
        self.local_channels = local_channels
        self.global_channels = global_channels

        self.local_proj: nn.Conv2d | None = None
        self.global_proj: nn.Module | None = None
        width = local_channels
        if local_channels != global_channels:
            if match == "global":
                self.global_proj = nn.Sequential(
                    nn.BatchNorm1d(global_channels),
                    nn.ReLU(inplace=True),
                    Dropout(drop_rate),
                    nn.Linear(global_channels, local_channels),
                )
            else:
                self.local_proj = nn.Conv2d(local_channels, global_channels, kernel_size=1)
                self.global_proj = nn.Sequential(
                    nn.BatchNorm1d(global_channels), nn.ReLU(inplace=True), Dropout(drop_rate)
                )
                width = global_channels
        self.out_channels = width

        self.score: nn.Conv2d | None = None
        self.local_key: nn.Conv2d | None = None
        self.global_key: nn.Linear | None = None
        if compatibility == "pc":
            self.score = nn.Conv2d(width, 1, kernel_size=1)  # u, as a 1x1 convolution with bias
        elif compatibility == "add":
            hidden = attn_channels or width
            self.local_key = nn.Conv2d(width, hidden, kernel_size=1, bias=False)
            self.global_key = nn.Linear(width, hidden)
            self.score = nn.Conv2d(hidden, 1, kernel_size=1)

    @torch.no_grad()
    def apply_mode(self) -> None:
        """Zeroes and freezes what the ablation :attr:`mode` fixes; a no-op for ``"learned"``."""
        if self.mode == "uniform":
            for module in (self.score, self.local_key, self.global_key):
                if module is not None:
                    for p in module.parameters():
                        p.zero_()
                        p.requires_grad_(False)
        elif self.mode in ("frozen", "detached", "from_g"):
            for p in self.parameters():
                p.requires_grad_(False)

    def compatibility_scores(self, local_feats: torch.Tensor, global_feat: torch.Tensor) -> torch.Tensor:
        """Unnormalised scores ``c`` (B, H, W), and nothing else: for inspection and tests.

        Under ``pc`` with a softmax these are ``<u, l_i> + b``: the per-image constant ``<u, g>`` of the paper's
        ``c_i = <u, l_i + g> + b`` is left out, since it cancels in the softmax (method §1.7), so the map is
        exactly the paper's but ``c`` differs from it by one number per image. Under a sigmoid it is included.
        """
        l, g = self._matched(local_feats, global_feat)
        return self._scores(l, g)

    def _matched(self, l: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.local_proj is not None:
            l = _pointwise(l, self.local_proj)  # (B, D, H, W)
        if self.global_proj is not None:
            g = self.global_proj(g)  # (B, C_out)
        return l, g

    def _scores(self, l: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.compatibility == "dp":
            return torch.einsum("bchw,bc->bhw", l, g)  # (B, H, W)
        assert self.score is not None
        if self.compatibility == "add":
            assert self.local_key is not None and self.global_key is not None
            hidden = F.relu(
                _pointwise(l, self.local_key) + self.global_key(g)[:, :, None, None]
            )  # (B, A, H, W)
            return _pointwise(hidden, self.score).squeeze(1)  # (B, H, W)
        # pc: <u, l_i + g> + b = <u, l_i> + b + <u, g>; the last term is one number per image.
        c = _pointwise(l, self.score).squeeze(1)  # (B, H, W)
        shift = g @ self.score.weight.view(-1)  # (B,)
        if self.normalization == "softmax":
            shift = shift * 0.0  # cancels in the softmax exactly; see the class docstring
        return c + shift[:, None, None]

    def forward(
        self, local_feats: torch.Tensor, global_feat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        l, g = self._matched(local_feats, global_feat)
        c = (
            self._scores(l.detach(), g.detach()) if self.mode == "detached" else self._scores(l, g)
        )  # (B, H, W)
        if self.mode == "uniform":
            c = c * 0.0  # exactly uniform, also for the parameter-free dot product
        b, h, w = c.shape
        if self.normalization == "softmax":
            a = torch.softmax(c.reshape(b, h * w), dim=1).reshape(b, h, w)
            g_a = torch.einsum("bhw,bchw->bc", a, l)  # weighted sum = weighted mean, since sum(a) = 1
        else:
            a = torch.sigmoid(c)
            g_a = torch.einsum("bhw,bchw->bc", a, l) / (h * w)  # gate, then spatial average
        if self.mode == "from_g":
            g_a = g  # the matched global feature, which always has the descriptor's width
        return g_a, a

    def extra_repr(self) -> str:
        mode = "" if self.mode == "learned" else f", mode={self.mode!r}"
        return (
            f"compatibility={self.compatibility!r}, normalization={self.normalization!r}, "
            f"match={self.match!r}{mode}"
        )


def create_attention(
    local_channels: int,
    global_channels: int,
    compatibility: str = "pc",
    normalization: str = "softmax",
    **kwargs: object,
) -> LinearAttention:
    """Builds a :class:`LinearAttention` from short strings; unknown names raise ``ValueError``."""
    _check_choice("compatibility", compatibility, COMPATIBILITIES)
    _check_choice("normalization", normalization, NORMALIZATIONS)
    return LinearAttention(
        local_channels,
        global_channels,
        compatibility=compatibility,  # type: ignore[arg-type]
        normalization=normalization,  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


class ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass; multiplies the incoming gradient by ``scale`` in the backward pass.

    Used for the official code's gradient *averaging* at branch points (method §3.3): a tensor feeding k
    consumers gets ``scale = 1/k`` on each branch, so its gradient is the mean instead of the sum.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Applies :class:`ScaleGrad` unless ``scale`` is 1 (then ``x`` itself is returned)."""
    if scale == 1.0:
        return x
    return ScaleGrad.apply(x, scale)
