"""Preprocessing presets (method §3.4): mean/std, cifar.torch YUV + LCN, GCN + ZCA; fitted state in buffers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltpa.errors import LTPAError
from ltpa.preprocess import GCNZCA, YUVLCN, MeanStd, build_preprocess, list_preprocess


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g)
    return (0.6 * base + 0.4 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def test_presets_listed() -> None:
    assert {"none", "meanstd", "yuv_lcn", "gcn_zca"} <= set(list_preprocess())
    with pytest.raises(ValueError, match="gcn_zca"):
        build_preprocess("zca", img_size=32)


def test_meanstd_fit_matches_torch() -> None:
    x = (_images(50, 6) * 255).round().to(torch.uint8)
    pre = build_preprocess("meanstd", img_size=6)
    assert pre.needs_fit and not pre.fitted
    pre.fit(x)
    xf = x.float() / 255
    assert pre.fitted
    assert torch.allclose(pre.mean.flatten(), xf.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(pre.std.flatten(), xf.transpose(0, 1).reshape(3, -1).std(dim=1), atol=1e-5)


def _reference_yuv_lcn(rgb: np.ndarray, uv_mean: np.ndarray, uv_std: np.ndarray) -> np.ndarray:
    """Straight loops over Torch's SpatialContrastiveNormalization(1, image.gaussian1D(7)) on 0..255 YUV."""
    m = np.array([[0.299, 0.587, 0.114], [-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]])
    yuv = np.einsum("oc,chw->ohw", m, rgb.astype(np.float64) * 255.0)
    g = np.exp(-(((np.arange(1, 8) - 4.0) / (0.25 * 7)) ** 2) / 2)
    k = np.outer(g, g) / g.sum() ** 2
    y = yuv[0]
    h, w = y.shape

    def smooth(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out, coef = np.zeros_like(img), np.zeros_like(img)
        for i in range(h):
            for j in range(w):
                for di in range(-3, 4):
                    for dj in range(-3, 4):
                        if 0 <= i + di < h and 0 <= j + dj < w:
                            out[i, j] += k[di + 3, dj + 3] * img[i + di, j + dj]
                            coef[i, j] += k[di + 3, dj + 3]
        return out, coef

    mean, coef = smooth(y)
    centred = y - mean / coef
    energy, _ = smooth(centred**2)
    std = np.sqrt(energy) / coef
    std = np.where(std > 1e-4, std, 1e-4)
    out = np.empty_like(yuv)
    out[0] = centred / std
    out[1:] = (yuv[1:] - uv_mean.reshape(2, 1, 1)) / uv_std.reshape(2, 1, 1)
    return out


def test_yuv_lcn_matches_independent_computation() -> None:
    train = _images(40, 9, seed=1)
    pre = build_preprocess("yuv_lcn", img_size=9).fit(train)
    assert isinstance(pre, YUVLCN) and pre.fitted
    m = torch.tensor([[-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]], dtype=torch.float64)
    uv = torch.einsum("oc,bchw->obhw", m, train.double() * 255).reshape(2, -1)
    assert torch.allclose(pre.uv_mean.double(), uv.mean(dim=1), rtol=1e-4)
    assert torch.allclose(pre.uv_std.double(), uv.std(dim=1), rtol=1e-4)
    test = _images(2, 9, seed=2)
    test[1, :, :4, :4] = 0.5  # a flat patch
    out = pre(test)
    for i in range(2):
        expected = _reference_yuv_lcn(test[i].numpy(), pre.uv_mean.numpy(), pre.uv_std.numpy())
        np.testing.assert_allclose(out[i].detach().numpy(), expected, rtol=2e-3, atol=2e-3)


def _correlated(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = 3 * size * size
    mix = torch.randn(d, d, generator=g) / d**0.5
    return (0.5 + 0.1 * torch.randn(n, d, generator=g) @ mix).clamp(0, 1).view(n, 3, size, size)


def test_gcn_zca_whitens_the_training_set() -> None:
    size, d = 4, 48
    train = _correlated(3000, size)
    pre = GCNZCA(size, filter_bias=1e-6).fit(train)
    with torch.no_grad():
        gcn = pre._gcn(train.double())
        z = pre(train).reshape(len(train), -1).double()
    assert torch.allclose(gcn.norm(dim=1), torch.full((len(train),), 55.0, dtype=torch.float64), rtol=1e-4)
    cov = (z - z.mean(0)).T @ (z - z.mean(0)) / len(z)
    # GCN removes each image's mean, so the all-ones direction has no variance; every other one is whitened
    expected = torch.eye(d, dtype=torch.float64) - torch.full((d, d), 1.0 / d, dtype=torch.float64)
    assert (cov - expected).abs().max() < 0.02
    default = build_preprocess("gcn_zca", img_size=size).fit(train)  # filter_bias 0.1 damps, never amplifies
    with torch.no_grad():
        zd = default(train).reshape(len(train), -1).double()
    eig = torch.linalg.eigvalsh((zd - zd.mean(0)).T @ (zd - zd.mean(0)) / len(zd))
    assert float(eig.max()) < 1.0 + 1e-3 and float(eig.min()) > -1e-4


def test_gcn_zca_size_limit_and_checks() -> None:
    assert build_preprocess("gcn_zca", img_size=32).zca_matrix.shape == (3072, 3072)
    with pytest.raises(LTPAError, match=r"img_size 64.*MB"):
        build_preprocess("gcn_zca", img_size=64)
    with pytest.raises(LTPAError, match=r"\(B, 3, 8, 8\)"):
        build_preprocess("gcn_zca", img_size=8)(torch.rand(2, 3, 9, 9))


@pytest.mark.parametrize("name", ["none", "meanstd", "yuv_lcn", "gcn_zca"])
def test_presets_are_differentiable_and_state_travels(name: str) -> None:
    size = 6
    train = _images(64, size)
    pre = build_preprocess(name, img_size=size)
    if pre.needs_fit:
        pre.fit((train * 255).round().to(torch.uint8))
    x = _images(3, size, seed=5)
    x[0] = 0.3  # a constant image: flat for LCN, zero-norm for GCN
    x.requires_grad_(True)
    out = pre(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    if name != "none":
        assert float(x.grad[1:].abs().sum()) > 0
    fresh = build_preprocess(name, img_size=size)
    fresh.load_state_dict(pre.state_dict())
    assert fresh.fitted
    with torch.no_grad():
        assert torch.allclose(fresh(x), pre(x))


def test_meanstd_with_given_statistics_needs_no_fit() -> None:
    pre = MeanStd((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert not pre.needs_fit and pre.fitted
    assert torch.allclose(pre(torch.full((1, 3, 2, 2), 0.75)), torch.ones(1, 3, 2, 2))
