"""Checks that a matplotlib figure is readable: every drawn text inside the figure, none over another."""

from __future__ import annotations

from typing import Any


def drawn_texts(fig: Any) -> list[tuple[str, Any]]:
    """``(text, window extent)`` of every non-empty text the figure actually draws."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    canvas = FigureCanvasAgg(fig)
    drawn: list[Text] = []
    original = Text.draw

    def record(self: Text, renderer: Any) -> None:
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)
        original(self, renderer)

    Text.draw = record  # type: ignore[method-assign]
    try:
        canvas.draw()
    finally:
        Text.draw = original  # type: ignore[method-assign]
    renderer = canvas.get_renderer()
    return [(t.get_text(), t.get_window_extent(renderer)) for t in drawn]


def assert_readable(fig: Any) -> list[str]:
    """Fails when a drawn text sticks out of the figure or overlaps another; returns the texts drawn."""
    texts = drawn_texts(fig)
    width, height = fig.bbox.width, fig.bbox.height
    for text, box in texts:
        inside = box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= width + 0.5 and box.y1 <= height + 0.5
        assert inside, f"{text!r} is cut off at the figure's edge ({box} in {width}x{height})"
    for i, (a, box_a) in enumerate(texts):
        for b, box_b in texts[i + 1 :]:
            overlap = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0) > 1 and (
                min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0) > 1
            )
            assert not overlap, f"{a!r} and {b!r} overlap"
    return [text for text, _ in texts]
