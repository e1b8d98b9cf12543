"""Colour label maps and blend them over images: what a person looks at to judge a segmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..io import atomic_path

IGNORE_COLOUR = (0, 0, 0)


def palette(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) uint8 distinct colours: matplotlib's tab20 first, then seeded random ones."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    tab20 = colormaps["tab20"]
    assert isinstance(tab20, ListedColormap)  # a list of 20 colours
    base = (np.array(tab20.colors) * 255).astype(np.uint8)
    if n <= len(base):
        return base[:n].copy()
    extra = np.random.default_rng(seed).integers(0, 256, size=(n - len(base), 3), dtype=np.uint8)
    return np.concatenate([base, extra])


def colourise(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) uint8; ids outside the palette (e.g. 255 = ignore) are black."""
    out = np.zeros((*labels.shape, 3), np.uint8)
    valid = labels < len(colours)
    out[valid] = colours[labels[valid]]
    out[~valid] = IGNORE_COLOUR
    return out


def overlay(image: Image.Image, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """Blend the colourised labels (nearest-resized to the image) over the image."""
    colour = Image.fromarray(colourise(labels, colours)).resize(image.size, Image.Resampling.NEAREST)
    return Image.blend(image.convert("RGB"), colour, alpha)


def save_panel(
    path: str | Path,
    image: Image.Image,
    prediction: np.ndarray,
    colours: np.ndarray,
    ground_truth: np.ndarray | None = None,
) -> Path:
    """Image | prediction overlay | ground truth (when given), side by side, as one PNG."""
    panels = [image.convert("RGB"), overlay(image, prediction, colours)]
    if ground_truth is not None:
        panels.append(Image.fromarray(colourise(ground_truth, colours)).resize(image.size, Image.Resampling.NEAREST))
    width, height = image.size
    canvas = Image.new("RGB", (width * len(panels), height))
    for i, panel in enumerate(panels):
        canvas.paste(panel, (i * width, 0))
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path
