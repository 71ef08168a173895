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


def test_grid_labels_rows_names_columns_once_and_clips_nothing() -> None:
    from _figures import assert_readable

    from ltpa.visualize import attention_grid_figure

    originals = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8) for _ in range(3)]
    panels = [[("conv10", torch.rand(32, 32)), ("conv13", torch.rand(32, 32))] for _ in range(3)]
    titles = [f"cluttered-digits[{i}]\npredicted 7 (93%)\ntrue {7 if i else 1}" for i in range(3)]
    fig = attention_grid_figure(
        originals,
        panels,
        row_titles=titles,
        row_ok=[False, True, True],
        boxes=[[4, 5, 20, 30], None, None],
        title="att2 (vgg_att2_concat_pc) on cluttered-digits (test split): 3 pictures, 2 of 3 classified correctly",
    )
    texts = assert_readable(fig)
    assert texts.count("conv10") == 1 and texts.count("image") == 1  # headings once, above the first row
    assert all(t in texts for t in titles)
    assert any("scaled per image" in t for t in texts)  # the colour bar says what the colours mean
    boxes = [p for ax in fig.axes for p in ax.patches]
    assert len(boxes) == 3  # the first row's box on the picture and on both maps
    assert boxes[0].get_width() == 16 and boxes[0].get_xy() == (3.5, 4.5)
    label_colours = {t.get_text(): t.get_color() for ax in fig.axes for t in ax.texts}
    assert label_colours[titles[0]] != label_colours[titles[1]]  # wrong in red, right in green


def test_too_narrow_a_label_column_would_be_caught() -> None:
    """The readability check itself fails on a figure whose row label sticks out at the left."""
    from _figures import assert_readable
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_ylabel("a long row label that does not fit", rotation=0, ha="right")
    with pytest.raises(AssertionError, match="cut off"):
        assert_readable(fig)
    fig = Figure(figsize=(3, 2))
    fig.subplots_adjust(top=0.99)
    fig.add_subplot(1, 1, 1).set_title("column")
    fig.suptitle("title")
    with pytest.raises(AssertionError, match=r"overlap|cut off"):
        assert_readable(fig)


def test_display_box_scales_the_mask_box_to_the_shown_picture() -> None:
    from ltpa.visualize import display_box

    mask = torch.zeros(16, 20, dtype=torch.bool)
    mask[4:10, 5:15] = True
    assert display_box(mask, (32, 40)) == [10.0, 8.0, 30.0, 20.0]
    assert display_box(torch.zeros(16, 20, dtype=torch.bool), (32, 40)) is None
    assert display_box(None, (32, 40)) is None


def test_overlay_figure_has_a_labelled_colour_bar_and_fits() -> None:
    from _figures import assert_readable

    from ltpa.visualize import overlay_figure

    image = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)
    fig = overlay_figure(
        image, torch.rand(48, 64), panel="conv10", title="seven.png: att2 predicts 7 (93.1%)"
    )
    texts = assert_readable(fig)
    assert "conv10" in texts and any(t.startswith("attention weight") for t in texts)
    fig = overlay_figure(image, torch.rand(48, 64), panel="Grad-CAM", title="x")
    assert any(t.startswith("Grad-CAM\n") for t in assert_readable(fig))
