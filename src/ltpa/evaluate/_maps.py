"""Spatial maps of a model and of the baselines: attention, CAM, Grad-CAM, a centred Gaussian, a uniform map.

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391 (method §4.3 and
§4.5: maps are bilinearly upsampled to the image and min-max scaled per image, since a softmax over 1,024
positions looks empty otherwise).

* Attention maps are what ``model.forward_attention`` returns, one per attended level, named by
  ``model.attn_info``; for ``vgg_gap`` that is the class activation map (CAM, Zhou et al. 2016) of the
  predicted class, for ``vgg_pan`` the sigmoid gate and the softmax map.
* Grad-CAM (Selvaraju et al. 2017) is computed on the last convolutional block of the trunk (see
  :func:`gradcam_target_layer`). With the optional ``grad-cam`` package installed (``pip install
  grad-cam``; in an ltpa checkout ``pip install -e '.[gradcam]'``) its ``GradCAM`` is used; otherwise (or with ``backend="own"``) a small implementation
  here, with a forward hook held in a context manager that always removes it. Both give the same maps: the
  ReLU of the gradient-weighted channel sum, min-max scaled at the layer's resolution, bilinearly upsampled to
  the input and min-max scaled again.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ltpa.errors import LTPAError
from ltpa.evaluate._data import batch_slices, eval_mode, model_device, progress_bar, to_model_input
from ltpa.models import LTPAModel
from ltpa.models._base import last_conv
from ltpa.utils import normalize_minmax

__all__ = [
    "GRADCAM_BACKENDS",
    "as_distribution",
    "attention_maps",
    "class_activation_maps",
    "compute_maps",
    "gaussian_prior",
    "grad_cam",
    "gradcam_backend",
    "gradcam_target_layer",
    "map_kind",
    "normalize_minmax",
    "uniform_map",
    "upsample",
]

GRADCAM_BACKENDS: tuple[str, ...] = ("auto", "package", "own")


def upsample(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling (``align_corners=False``) of per-image maps to ``size``.

    Shape:
        - maps: (B, h, w)
        - output: (B, H, W)
    """
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == hw:
        return maps
    return F.interpolate(maps[:, None].float(), size=hw, mode="bilinear", align_corners=False)[:, 0]


def as_distribution(maps: torch.Tensor) -> torch.Tensor:
    """Maps as distributions over positions (non-negative, summing to 1 per image).

    Non-negative maps (softmax attention, sigmoid gates, Grad-CAM) are divided by their sum; a map with
    negative values (a CAM) is first shifted so that its minimum is 0. An all-zero map becomes uniform.

    Shape:
        - maps: (B, H, W)
        - output: (B, H, W)
    """
    flat = maps.float().flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    flat = flat - lo.clamp(max=0.0)
    total = flat.sum(dim=1, keepdim=True)
    uniform = torch.full_like(flat, 1.0 / flat.shape[1])
    out = torch.where(total > 0, flat / total.clamp_min(torch.finfo(flat.dtype).tiny), uniform)
    return out.view_as(maps)


def gaussian_prior(size: int, batch: int = 1, *, sigma: float = 0.25) -> torch.Tensor:
    """A centred isotropic Gaussian, the "objects sit in the middle" baseline; ``sigma`` is a fraction of the
    side. Its maximum is 1 (at the centre).

    Shape:
        - output: (batch, size, size)
    """
    if sigma <= 0:
        raise LTPAError(f"the Gaussian prior's sigma must be positive, got {sigma}")
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0
    d2 = coords[:, None] ** 2 + coords[None, :] ** 2  # (S, S)
    prior = torch.exp(-d2 / (2.0 * (sigma * size) ** 2))
    return prior.expand(batch, size, size).clone()


def uniform_map(size: int, batch: int = 1) -> torch.Tensor:
    """The uniform map (every position 1/S²), the baseline without any preference.

    Shape:
        - output: (batch, size, size)
    """
    return torch.full((batch, size, size), 1.0 / (size * size))


def map_kind(model: nn.Module) -> str:
    """What the model's maps are, as it declares (``LTPAModel.map_kind``): ``"cam"`` for VGG-GAP (class
    activation maps), ``"attention"`` for every other model, and for modules that are not ltpa models."""
    return model.map_kind if isinstance(model, LTPAModel) else "attention"


def _level_names(model: nn.Module, count: int) -> list[str]:
    info = getattr(model, "attn_info", [])
    names = [str(level.get("name", f"level{i + 1}")) for i, level in enumerate(info)]
    if len(names) != count:
        names = [f"level{i + 1}" for i in range(count)]
    return names


def attention_maps(model: LTPAModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's own maps, one per attended level, named by ``attn_info`` (empty for the plain VGG).

    Shape:
        - x: (B, 3, H, W) in [0, 1]
        - each map: (B, H_s, W_s), at the level's resolution, unnormalised
    """
    maps = model.forward_attention(x).maps
    return dict(zip(_level_names(model, len(maps)), maps))


def class_activation_maps(
    model: nn.Module, x: torch.Tensor, classes: torch.Tensor | None = None
) -> torch.Tensor:
    """CAMs of a ``vgg_gap`` model for ``classes`` (default: the predicted class).

    Shape:
        - x: (B, 3, H, W) in [0, 1]
        - output: (B, h, w) at conv13's resolution
    """
    if map_kind(model) != "cam":
        name = getattr(model, "model_name", type(model).__name__)
        raise LTPAError(
            f"class activation maps need a vgg_gap model, got {name}; train one with --model vgg_gap"
        )
    return cast(Any, model).cam(x, classes)  # the models whose maps are CAMs have cam()


def gradcam_target_layer(model: nn.Module) -> nn.Module:
    """The module whose output Grad-CAM explains: the last convolutional block of the trunk.

    An ltpa model declares it (``LTPAModel.gradcam_layer``): for the attention VGGs conv13 (not conv15 of the
    global path, which under pc receives no gradient, method §1.7); for PAN conv13 on the gated map; for VGG
    and VGG-GAP conv13; for the ResNets stage 3; for other models the last ``nn.Conv2d`` they register. Other
    modules: the last ``nn.Conv2d`` they register.

    Raises:
        LTPAError: when the model has no convolution.
    """
    return model.gradcam_layer() if isinstance(model, LTPAModel) else last_conv(model)


def _module_name(model: nn.Module, layer: nn.Module) -> str:
    return next((name for name, m in model.named_modules() if m is layer), type(layer).__name__)


def gradcam_level_name(model: nn.Module, layer: nn.Module | None = None) -> str:
    """The name Grad-CAM maps of ``model`` are reported under: the paper's name of the layer it explains
    (``conv13``, ``stage3``, as the attention maps of that layer are named) where the model declares it
    (``LTPAModel.gradcam_level``), else the layer's module name."""
    declared = getattr(model, "gradcam_level", "")
    if declared:
        return str(declared)
    return _module_name(model, layer if layer is not None else gradcam_target_layer(model))


def gradcam_backend(backend: str = "auto") -> str:
    """The Grad-CAM implementation ``backend`` resolves to: ``"package"`` (``grad-cam``) or ``"own"``.

    Raises:
        LTPAError: for an unknown backend, or ``"package"`` without ``grad-cam`` installed.
    """
    if backend not in GRADCAM_BACKENDS:
        raise LTPAError(f"unknown Grad-CAM backend {backend!r}; choose one of {', '.join(GRADCAM_BACKENDS)}")
    installed = importlib.util.find_spec("pytorch_grad_cam") is not None
    if backend == "package" and not installed:
        raise LTPAError(
            "the grad-cam package is not installed; pip install 'grad-cam>=1.5' (or, in an ltpa checkout, "
            "pip install -e '.[gradcam]') or use the own backend"
        )
    if backend == "auto":
        return "package" if installed else "own"
    return backend


@contextlib.contextmanager
def _capture_output(layer: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Records ``layer``'s forward output under ``"output"``; the hook is removed however the block ends."""
    store: dict[str, torch.Tensor] = {}

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        store["output"] = output

    handle = layer.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def _scale(cam: torch.Tensor) -> torch.Tensor:
    # Same scaling as grad-cam's scale_cam_image: shift to 0, divide by the maximum (+1e-7).
    flat = cam.flatten(1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    return (flat / (flat.max(dim=1, keepdim=True).values + 1e-7)).view_as(cam)


def _own_grad_cam(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    x = x.detach().requires_grad_(True)  # activations need a graph even when the weights are frozen
    with _capture_output(layer) as store:
        logits = model(x)
    if "output" not in store:
        raise LTPAError(f"Grad-CAM target layer {type(layer).__name__} did not run in the forward pass")
    acts = store["output"]  # (B, C, h, w)
    score = logits.gather(1, classes[:, None].to(logits.device)).sum()
    (grads,) = torch.autograd.grad(score, acts)
    weights = grads.mean(dim=(2, 3))  # (B, C)
    cam = F.relu((weights[:, :, None, None] * acts).sum(dim=1)).detach()  # (B, h, w)
    return _scale(upsample(_scale(cam), (int(x.shape[-2]), int(x.shape[-1]))))


def _package_grad_cam(
    model: nn.Module, x: torch.Tensor, classes: torch.Tensor, layer: nn.Module
) -> torch.Tensor:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    # Not used as a context manager: grad-cam's __exit__ swallows IndexError (CONTRIBUTING.md §10).
    cam = GradCAM(model=model, target_layers=[layer])
    try:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        cam.activations_and_grads.release()
    return torch.from_numpy(maps).float().to(x.device)


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    classes: torch.Tensor | None = None,
    *,
    target_layer: nn.Module | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Grad-CAM of ``classes`` (default: the predicted class) at the input's resolution, in [0, 1].

    The model runs in eval mode (its train/eval flags are restored afterwards) and the gradients of its
    parameters are left as they were.

    Args:
        model: any classifier taking [0, 1] images.
        x: images in [0, 1].
        classes: (B,) target class per image.
        target_layer: module to explain (default :func:`gradcam_target_layer`).
        backend: ``"auto"`` (the ``grad-cam`` package when installed), ``"package"`` or ``"own"``.

    Shape:
        - x: (B, 3, H, W)
        - output: (B, H, W)
    """
    which = gradcam_backend(backend)
    layer = target_layer if target_layer is not None else gradcam_target_layer(model)
    params = list(model.parameters())
    saved_grads = [p.grad for p in params]
    try:
        with eval_mode(model), torch.enable_grad():
            if classes is None:
                with torch.no_grad():
                    classes = model(x).argmax(dim=1)
            classes = classes.to(x.device).long()
            if which == "package":
                return _package_grad_cam(model, x, classes, layer)
            return _own_grad_cam(model, x, classes, layer)
    finally:
        for p, g in zip(params, saved_grads):
            p.grad = g


def compute_maps(
    model: LTPAModel,
    images: torch.Tensor,
    *,
    size: int | None = None,
    batch_size: int = 128,
    gradcam: bool = False,
    gradcam_backend: str = "auto",
    progress: bool | None = None,
) -> dict[tuple[str, str], torch.Tensor]:
    """Every map of ``model`` on ``images``, upsampled to ``size`` (default: the images' side), on the CPU.

    Keys are ``(kind, level)``: ``("attention", "conv10")``, ``("cam", "conv13")`` for VGG-GAP, and with
    ``gradcam`` also ``("gradcam", <its layer's name>)`` (:func:`gradcam_level_name`: ``conv13`` for the VGGs). Attention maps keep their values (a softmax map
    still sums to about 1 after upsampling); Grad-CAM maps are in [0, 1].

    Shape:
        - images: (N, 3, S, S) uint8 or float [0, 1]
        - each map: (N, size, size)
    """
    size = size or int(images.shape[-1])
    device = model_device(model)
    kind = map_kind(model)
    layer = gradcam_target_layer(model) if gradcam else None
    gradcam_level = gradcam_level_name(model, layer) if layer is not None else ""
    parts: dict[tuple[str, str], list[torch.Tensor]] = {}
    for sl in progress_bar(batch_slices(len(images), batch_size), desc="maps", progress=progress):
        x = to_model_input(images[sl], model.img_size, device)
        with torch.no_grad(), eval_mode(model):
            own = attention_maps(model, x)
        for level, maps in own.items():
            parts.setdefault((kind, level), []).append(upsample(maps.float(), size).cpu())
        if layer is not None:
            cam = grad_cam(model, x, target_layer=layer, backend=gradcam_backend)
            parts.setdefault(("gradcam", gradcam_level), []).append(upsample(cam, size).cpu())
    return {key: torch.cat(chunks) for key, chunks in parts.items()}
