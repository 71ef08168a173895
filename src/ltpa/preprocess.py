"""Input normalisation presets that live inside the model (method §3.4).

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391.

Models take images in [0, 1]; the preset turns them into what the network was trained on. Every preset is a
differentiable ``nn.Module`` (attacks backpropagate through it), and state fitted from data (means, standard
deviations, a ZCA matrix) lives in buffers, so ``state_dict`` and checkpoints carry it.

Presets:

* ``"none"``: identity.
* ``"meanstd"``: per-channel ``(x - mean) / std``; mean/std given or fitted on the training set.
* ``"yuv_lcn"``: the cifar.torch provider used for the official CIFAR-10 runs: RGB to YUV, the Y channel
  locally contrast-normalised as Torch's ``nn.SpatialContrastiveNormalization(1, image.gaussian1D(7))`` does,
  U and V standardised with training-set statistics.
* ``"gcn_zca"``: the pylearn2 / WRN "whitened" files used for CIFAR-100: per-image global contrast
  normalisation (scale 55) followed by ZCA whitening fitted on the training set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ltpa.errors import LTPAError
from ltpa.utils import to_unit_float

__all__ = [
    "GCNZCA",
    "PREPROCESSORS",
    "YUVLCN",
    "MeanStd",
    "Preprocess",
    "build_preprocess",
    "gaussian_kernel_1d",
    "list_preprocess",
    "rgb_to_yuv",
]

# Images per step when fitting, so that a 50,000-image training set is never converted to float at once.
_FIT_CHUNK = 2048
# The ZCA matrix is (3*S*S)^2 float32 values; beyond this many bytes a preset refuses the size.
_MAX_ZCA_BYTES = 200 * 1024**2


def _chunks(images: torch.Tensor, size: int = _FIT_CHUNK) -> Iterator[torch.Tensor]:
    for start in range(0, images.shape[0], size):
        yield Preprocess.as_float(images[start : start + size])


def _check_batch(images: torch.Tensor, what: str) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise LTPAError(f"{what}: expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] < 2:
        raise LTPAError(f"{what}: fitting needs at least 2 images, got {images.shape[0]}")


class Preprocess(nn.Module):
    """A normalisation applied to [0, 1] images inside a model.

    ``fit(images)`` computes any data-dependent state from a uint8 (N, 3, H, W) or float [0, 1] tensor of
    training images; ``fitted`` says whether that has happened (or was not needed).

    Shape:
        - Input: (B, 3, H, W) float in [0, 1].
        - Output: (B, 3, H, W) float.
    """

    needs_fit: bool = False
    fitted_flag: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("fitted_flag", torch.tensor(not self.needs_fit))

    @property
    def fitted(self) -> bool:
        return bool(self.fitted_flag)

    def fit(self, images: torch.Tensor) -> Preprocess:
        self.fitted_flag.fill_(True)
        return self

    @staticmethod
    def as_float(images: torch.Tensor) -> torch.Tensor:
        """uint8 images to float [0, 1]; float images unchanged."""
        return to_unit_float(images)


class Identity(Preprocess):
    """No normalisation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class MeanStd(Preprocess):
    """Per-channel standardisation ``(x - mean) / std``.

    Args:
        mean: per-channel means of [0, 1] pixels; with ``std``, no fit is needed.
        std: per-channel standard deviations.

    Shape:
        - Input: (B, 3, H, W) float in [0, 1].
        - Output: (B, 3, H, W).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        self.needs_fit = mean is None or std is None
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(mean if mean is not None else [0.0, 0.0, 0.0]).view(1, 3, 1, 1)
        )
        self.register_buffer(
            "std", torch.tensor(std if std is not None else [1.0, 1.0, 1.0]).view(1, 3, 1, 1)
        )

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> MeanStd:
        _check_batch(images, "meanstd fit")
        total = torch.zeros(3, dtype=torch.float64)
        total_sq = torch.zeros(3, dtype=torch.float64)
        for chunk in _chunks(images):
            x = chunk.double().transpose(0, 1).reshape(3, -1)  # (3, n*H*W)
            total += x.sum(dim=1).cpu()
            total_sq += (x * x).sum(dim=1).cpu()
        count = images.shape[0] * images.shape[2] * images.shape[3]
        mean = total / count
        var = (total_sq - count * mean * mean) / (count - 1)  # unbiased, as torch.std
        self.mean.copy_(mean.float().view(1, 3, 1, 1))
        self.std.copy_(var.clamp_min(0).sqrt().clamp_min(1e-6).float().view(1, 3, 1, 1))
        return super().fit(images)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


# Torch7 image.rgb2yuv: rows give Y, U, V from R, G, B.
_RGB_TO_YUV = (
    (0.299, 0.587, 0.114),
    (-0.14713, -0.28886, 0.436),
    (0.615, -0.51499, -0.10001),
)


def rgb_to_yuv(x: torch.Tensor) -> torch.Tensor:
    """RGB to YUV with the coefficients of Torch7's ``image.rgb2yuv``.

    Shape:
        - Input: (B, 3, H, W).
        - Output: (B, 3, H, W), channels Y, U, V.
    """
    matrix = torch.tensor(_RGB_TO_YUV, dtype=x.dtype, device=x.device)
    return torch.einsum("oc,bchw->bohw", matrix, x)


def gaussian_kernel_1d(size: int = 7, sigma: float = 0.25) -> torch.Tensor:
    """Torch7's ``image.gaussian1D(size)``: ``exp(-((i - c) / (sigma * size))^2 / 2)``, i = 1..size, c = size/2 + 0.5.

    Unnormalised (amplitude 1), as Torch returns it; the contrastive normalisation normalises it itself.

    Shape:
        - Output: (size,).
    """
    center = 0.5 * size + 0.5
    i = torch.arange(1, size + 1, dtype=torch.float64)
    return torch.exp(-(((i - center) / (sigma * size)) ** 2) / 2)


class YUVLCN(Preprocess):
    """The cifar.torch provider (method §3.4): YUV, local contrast normalisation of Y, standardised U and V.

    Y is normalised as Torch's ``nn.SpatialContrastiveNormalization(1, image.gaussian1D(7))``, per image: with
    the separable kernel ``k`` normalised to sum 1 and zero padding, ``coef = k * 1`` corrects the borders;
    subtractive step ``y - (k * y) / coef``; divisive step ``y / max(sqrt(k * y^2) / coef, 1e-4)`` (Torch divides
    the square root by ``coef``, and its threshold replaces any value <= 1e-4 by 1e-4). Pixels are scaled to
    0..255 first because the provider worked on byte values, which is where the 1e-4 threshold applies. U and V
    are standardised with the mean and (unbiased) std of the training set, fitted by :meth:`fit`.

    Args:
        kernel_size: taps of the Gaussian kernel (7 in cifar.torch).
        threshold: Torch's divisive-normalisation threshold (and replacement value).

    Shape:
        - Input: (B, 3, H, W) float RGB in [0, 1].
        - Output: (B, 3, H, W): normalised Y, U, V.
    """

    needs_fit = True
    pixel_scale = 255.0
    kernel: torch.Tensor
    uv_mean: torch.Tensor
    uv_std: torch.Tensor

    def __init__(self, kernel_size: int = 7, threshold: float = 1e-4) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise LTPAError(f"yuv_lcn: kernel_size must be a positive odd number, got {kernel_size}")
        kernel = gaussian_kernel_1d(kernel_size)
        self.register_buffer("kernel", (kernel / kernel.sum()).float())
        self.threshold = threshold
        self.register_buffer("uv_mean", torch.zeros(2))
        self.register_buffer("uv_std", torch.ones(2))

    def _smooth(self, x: torch.Tensor) -> torch.Tensor:
        """Separable convolution with zero padding. (B, 1, H, W) -> (B, 1, H, W)."""
        k = self.kernel.to(x.dtype)
        pad = k.numel() // 2
        x = F.conv2d(x, k.view(1, 1, 1, -1), padding=(0, pad))
        return F.conv2d(x, k.view(1, 1, -1, 1), padding=(pad, 0))

    def normalize_luma(self, y: torch.Tensor) -> torch.Tensor:
        """Torch's spatial contrastive normalisation of a (B, 1, H, W) channel on the 0..255 scale."""
        coef = self._smooth(torch.ones_like(y[:1]))  # (1, 1, H, W): kernel mass inside the image
        centred = y - self._smooth(y) / coef
        # clamp keeps sqrt differentiable on flat regions; those values are below the threshold anyway
        local_std = self._smooth(centred * centred).clamp_min(1e-12).sqrt() / coef
        divisor = torch.where(
            local_std > self.threshold, local_std, torch.full_like(local_std, self.threshold)
        )
        return centred / divisor

    def _yuv(self, x: torch.Tensor) -> torch.Tensor:
        return rgb_to_yuv(x * self.pixel_scale)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> YUVLCN:
        _check_batch(images, "yuv_lcn fit")
        total = torch.zeros(2, dtype=torch.float64)
        total_sq = torch.zeros(2, dtype=torch.float64)
        for chunk in _chunks(images):
            uv = self._yuv(chunk.to(self.kernel.device))[:, 1:].double().transpose(0, 1).reshape(2, -1)
            total += uv.sum(dim=1).cpu()
            total_sq += (uv * uv).sum(dim=1).cpu()
        count = images.shape[0] * images.shape[2] * images.shape[3]
        mean = total / count
        var = (total_sq - count * mean * mean) / (count - 1)
        self.uv_mean.copy_(mean.float())
        self.uv_std.copy_(var.clamp_min(0).sqrt().clamp_min(1e-6).float())
        return super().fit(images)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        yuv = self._yuv(x)  # (B, 3, H, W)
        y = self.normalize_luma(yuv[:, :1])  # (B, 1, H, W)
        uv = (yuv[:, 1:] - self.uv_mean.view(1, 2, 1, 1)) / self.uv_std.view(1, 2, 1, 1)  # (B, 2, H, W)
        return torch.cat([y, uv], dim=1)


def global_contrast_normalize(
    x: torch.Tensor,
    scale: float = 55.0,
    use_std: bool = False,
    sqrt_bias: float = 0.0,
    min_divisor: float = 1e-8,
) -> torch.Tensor:
    """pylearn2's ``global_contrast_normalize`` on flattened images.

    Each row is centred, then divided by ``sqrt(sqrt_bias + sum(x^2)) / scale`` (or by the unbiased standard
    deviation with ``use_std``); divisors below ``min_divisor`` become 1, as in pylearn2.

    Shape:
        - Input: (B, D).
        - Output: (B, D).
    """
    centred = x - x.mean(dim=1, keepdim=True)
    if use_std:
        energy = centred.var(dim=1, keepdim=True, unbiased=x.shape[1] > 1)
    else:
        energy = (centred * centred).sum(dim=1, keepdim=True)
    # clamp keeps sqrt differentiable for constant images, whose divisor is replaced by 1 below
    divisor = (energy + sqrt_bias).clamp_min(1e-30).sqrt() / scale
    divisor = torch.where(divisor < min_divisor, torch.ones_like(divisor), divisor)
    return centred / divisor


class GCNZCA(Preprocess):
    """Global contrast normalisation + ZCA whitening, the "whitened" CIFAR files of method §3.4.

    Per image: pylearn2 GCN with ``scale=55`` (the WRN whitening script). Then ZCA as pylearn2's ``ZCA``
    preprocessor: ``P = V diag(1 / sqrt(lambda + filter_bias)) V^T`` from the eigen-decomposition of the
    training-set covariance of GCN'd images, applied as ``(x - mean) P``. The mean and ``P`` are buffers whose
    size follows ``img_size``; sizes whose (3*S*S)^2 matrix would pass ~200 MB are refused.

    Args:
        img_size: side of the square input images.
        scale: GCN scale.
        filter_bias: added to the eigenvalues (pylearn2 default 0.1), which damps the noisiest directions.
        use_std: GCN divides by the standard deviation instead of the norm.
        sqrt_bias: GCN bias under the square root.

    Shape:
        - Input: (B, 3, img_size, img_size) float in [0, 1].
        - Output: (B, 3, img_size, img_size).
    """

    needs_fit = True
    zca_mean: torch.Tensor
    zca_matrix: torch.Tensor

    def __init__(
        self,
        img_size: int,
        *,
        scale: float = 55.0,
        filter_bias: float = 0.1,
        use_std: bool = False,
        sqrt_bias: float = 0.0,
    ) -> None:
        super().__init__()
        dim = 3 * img_size * img_size
        if img_size < 1 or dim * dim * 4 > _MAX_ZCA_BYTES:
            limit = math.isqrt(math.isqrt(_MAX_ZCA_BYTES // 4) // 3)
            raise LTPAError(
                f"gcn_zca: img_size {img_size} needs a {dim}x{dim} ZCA matrix ({dim * dim * 4 / 1024**2:.0f} MB); "
                f"use img_size <= {limit} or the 'meanstd' preset"
            )
        self.img_size = img_size
        self.scale = scale
        self.filter_bias = filter_bias
        self.use_std = use_std
        self.sqrt_bias = sqrt_bias
        self.register_buffer("zca_mean", torch.zeros(dim))
        self.register_buffer("zca_matrix", torch.eye(dim))

    def _check_size(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, self.img_size, self.img_size):
            raise LTPAError(
                f"gcn_zca: built for (B, 3, {self.img_size}, {self.img_size}) images, got {tuple(x.shape)}"
            )

    def _gcn(self, x: torch.Tensor) -> torch.Tensor:
        return global_contrast_normalize(
            x.reshape(x.shape[0], -1), scale=self.scale, use_std=self.use_std, sqrt_bias=self.sqrt_bias
        )

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> GCNZCA:
        _check_batch(images, "gcn_zca fit")
        self._check_size(images)
        dim = self.zca_mean.numel()
        total = torch.zeros(dim, dtype=torch.float64)
        gram = torch.zeros(dim, dim, dtype=torch.float64)
        for chunk in _chunks(images):
            z = self._gcn(chunk.double().cpu())  # (n, D)
            total += z.sum(dim=0)
            gram += z.T @ z
        n = images.shape[0]
        mean = total / n
        cov = gram / n - torch.outer(mean, mean)  # pylearn2: X^T X / N of centred data
        eigvals, eigvecs = torch.linalg.eigh(cov + self.filter_bias * torch.eye(dim, dtype=torch.float64))
        matrix = (eigvecs * eigvals.clamp_min(1e-12).rsqrt()) @ eigvecs.T
        self.zca_mean.copy_(mean.float())
        self.zca_matrix.copy_(matrix.float())
        return super().fit(images)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_size(x)
        z = (self._gcn(x) - self.zca_mean) @ self.zca_matrix  # (B, D)
        return z.view_as(x)


PREPROCESSORS: dict[str, Callable[..., Preprocess]] = {
    "none": lambda img_size: Identity(),
    "meanstd": lambda img_size: MeanStd(),
    "yuv_lcn": lambda img_size: YUVLCN(),
    "gcn_zca": lambda img_size: GCNZCA(img_size),
}


def list_preprocess() -> list[str]:
    """Names accepted by :func:`build_preprocess`."""
    return sorted(PREPROCESSORS)


def build_preprocess(name: str, *, img_size: int) -> Preprocess:
    """The preset ``name`` for square images of side ``img_size``.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
        LTPAError: for a size the preset cannot hold (``gcn_zca`` needs a ZCA matrix under ~200 MB, so S <= 49).
    """
    if name not in PREPROCESSORS:
        raise ValueError(f"unknown preprocess {name!r}; choose one of {', '.join(list_preprocess())}")
    return PREPROCESSORS[name](img_size)
