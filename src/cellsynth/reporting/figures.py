"""Figures of the report: matplotlib on the Agg canvas (object-oriented API, no pyplot state, so
figures can be drawn from any thread or worker) and their PNG bytes."""

from __future__ import annotations

import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["figure_to_image", "figure_to_png", "grid_shape", "image_to_png", "new_figure"]


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` × ``height`` inches with constrained layout, on its own Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def grid_shape(n: int, max_columns: int = 4) -> tuple[int, int]:
    """``(rows, columns)`` of a panel grid holding ``n`` panels, at most ``max_columns`` wide."""
    columns = max(1, min(max_columns, n))
    return math.ceil(max(n, 1) / columns), columns


def figure_to_png(fig: Figure, dpi: int = 110, *, tight: bool = False) -> bytes:
    """PNG bytes of a figure; ``tight`` crops it to its drawn content (e.g. legends outside the axes)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    return buffer.getvalue()


def figure_to_image(fig: Figure, dpi: int = 110):
    """The figure as a PIL image (what ``pillow.ImageDataset`` saves as PNG)."""
    from PIL import Image

    image = Image.open(io.BytesIO(figure_to_png(fig, dpi=dpi)))
    image.load()
    return image


def image_to_png(image) -> bytes:
    """PNG bytes of a PIL image (e.g. a figure loaded back from a ``pillow.ImageDataset``)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
