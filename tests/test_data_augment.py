"""Batched augmentation: flips (random and exactly half), reflect-padded crops, resizing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ltpa.data.augment import random_crop, random_flip, resize


def _batch(dtype: torch.dtype = torch.uint8, b: int = 16) -> torch.Tensor:
    x = torch.arange(b * 3 * 8 * 10).view(b, 3, 8, 10) % 251
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_random_flip_flips_whole_images(dtype: torch.dtype) -> None:
    x = _batch(dtype)
    out = random_flip(x, torch.Generator().manual_seed(0))
    assert out.dtype == dtype and out.shape == x.shape
    flipped = [bool(torch.equal(o, i.flip(-1))) for o, i in zip(out, x)]
    kept = [bool(torch.equal(o, i)) for o, i in zip(out, x)]
    assert all(f != k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < len(x)
    assert torch.equal(out, random_flip(x, torch.Generator().manual_seed(0)))


def test_random_flip_half_flips_exactly_half() -> None:
    x = _batch(b=17)
    for seed in range(5):
        out = random_flip(x, torch.Generator().manual_seed(seed), mode="half")
        assert sum(bool(torch.equal(o, i.flip(-1))) for o, i in zip(out, x)) == 8
    with pytest.raises(ValueError, match="mode"):
        random_flip(x, mode="sometimes")  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_random_crop_matches_reflect_pad_then_crop(dtype: torch.dtype) -> None:
    x = _batch(dtype)
    out = random_crop(x, padding=4, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == dtype
    padded = F.pad(x.float(), (4, 4, 4, 4), mode="reflect")
    for o, p in zip(out, padded):
        windows = p.unfold(1, 8, 1).unfold(2, 10, 1)  # (3, 9, 9, 8, 10): every crop position
        hits = (windows == o.float()[:, None, None]).all(dim=(0, 3, 4))  # (9, 9)
        assert bool(hits.any())
    offsets = {tuple(o[0, 0, :2].tolist()) for o in out}
    assert len(offsets) > 1  # not the same crop for every image
    assert torch.equal(random_crop(x, padding=0), x)


def test_random_crop_size_and_errors() -> None:
    x = _batch()
    assert random_crop(x, padding=2, size=6).shape == (16, 3, 6, 6)
    with pytest.raises(ValueError, match="padding"):
        random_crop(x, padding=8)
    with pytest.raises(ValueError, match="does not fit"):
        random_crop(x, padding=1, size=20)


def test_resize_keeps_dtype_and_handles_masks() -> None:
    x = _batch()
    small = resize(x, 4)
    assert small.shape == (16, 3, 4, 4) and small.dtype == torch.uint8
    assert torch.equal(
        resize(torch.full((3, 9, 7), 77, dtype=torch.uint8), (5, 11)),
        torch.full((3, 5, 11), 77, dtype=torch.uint8),
    )
    f = resize(x.float() / 255, 16)
    assert f.dtype == torch.float32 and f.shape == (16, 3, 16, 16)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, 2:6, 4:8] = True
    big = resize(mask, 16)
    assert big.dtype == torch.bool and int(big.sum()) == 4 * int(mask.sum())
    assert resize(x, (8, 10)) is x
