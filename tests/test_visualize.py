"""Reading any image file, overlays, and the attention grid figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ltpa.errors import LTPAError
from ltpa.visualize import display_size, load_image, overlay, plot_attention_grid, save_png


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [("RGB", ".jpg"), ("L", ".png"), ("RGBA", ".png"), ("P", ".gif"), ("I;16", ".png"), ("CMYK", ".jpg"),
     ("1", ".bmp"), ("LA", ".png"), ("F", ".tiff")],
)  # fmt: skip
def test_load_image_accepts_any_mode(mode: str, suffix: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    if mode in ("I;16", "F"):
        array = rng.integers(0, 60000, size=(13, 21)).astype(np.uint16 if mode == "I;16" else np.float32)
        image = Image.fromarray(array)
    else:
        image = Image.fromarray(rng.integers(0, 256, size=(13, 21, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / f"picture{suffix}"
    image.save(path)
    loaded = load_image(path)
    assert loaded.dtype == torch.uint8 and loaded.shape == (3, 13, 21)
    if mode in ("I;16", "F"):
        assert loaded.min() == 0 and loaded.max() == 255  # rescaled to 8 bits, not clipped


def test_load_image_composites_transparency_onto_white(tmp_path: Path) -> None:
    path = tmp_path / "clear.png"
    Image.new("RGBA", (4, 3), (255, 0, 0, 0)).save(path)
    assert torch.equal(load_image(path), torch.full((3, 3, 4), 255, dtype=torch.uint8))


def test_load_image_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(LTPAError, match="not found"):
        load_image(tmp_path / "missing.png")
    bad = tmp_path / "text.png"
    bad.write_text("not an image")
    with pytest.raises(LTPAError, match=r"text\.png"):
        load_image(bad)


def test_overlay_blends_heat_colours() -> None:
    image = torch.full((3, 5, 7), 200, dtype=torch.uint8)
    heat = torch.linspace(0, 1, 35).view(5, 7)
    out = overlay(image, heat, alpha=0.0)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8 and (out == 200).all()
    hot = overlay(image, torch.ones(5, 7), alpha=1.0)
    assert (hot[..., 0] > 100).all() and (hot[..., 2] < 50).all()  # jet's top is red
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, torch.ones(4, 7))


def test_grid_figure_and_png(tmp_path: Path) -> None:
    originals = [
        torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8),
        torch.randint(0, 256, (3, 25, 10), dtype=torch.uint8),
    ]
    panels = [[("a", torch.rand(20, 30)), ("b", torch.rand(20, 30))], [("a", torch.rand(25, 10))]]
    path = plot_attention_grid(originals, panels, tmp_path / "grid.png", row_titles=["x", "y"])
    assert Image.open(path).size[0] > 300
    png = save_png(overlay(originals[0], panels[0][0][1]), tmp_path / "one.png")
    assert Image.open(png).size == (30, 20)
    assert display_size(100, 50, 192) == (192, 96)
