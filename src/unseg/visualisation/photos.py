"""What ``unseg segment`` writes for each photo, and the page that shows them.

Per image ``<id>``, at the photo's own size: ``labels/<id>.png`` (group ids: one vocabulary
across the folder), ``segments/<id>.png`` (the image's own segment ids), ``foreground/<id>.png``
(255 = foreground). Label and segment maps are palette PNGs: their pixel values are the ids, and
image viewers show them in the gallery's colours. ``panels/<id>.jpg`` puts four views side by side
at display size for ``index.html``: the photo, its group labels, its segments (boundaries drawn),
its foreground.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import atomic_path
from ..unsupervised.per_image import ImageSegmentation
from .gallery import GalleryItem, write_gallery
from .overlay import colourise, palette

__all__ = ["PANEL_HEIGHT", "OUTPUT_FOLDERS", "WrittenImage", "write_image", "write_photo_gallery", "panel"]

PANEL_HEIGHT = 220  # px: each view of a gallery panel
OUTPUT_FOLDERS = ("labels", "segments", "foreground", "panels")


def _save(picture: Image.Image, path: Path, **options: object) -> None:
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG" if path.suffix == ".png" else "JPEG", **options)


def _id_map(ids: np.ndarray, colours: np.ndarray) -> Image.Image:
    """Ids as a palette PNG image (values = ids, shown in ``colours``); 16-bit grey above 256 ids."""
    if len(colours) > 256:
        return Image.fromarray(ids.astype(np.uint16))
    picture = Image.fromarray(ids.astype(np.uint8), mode="P")
    picture.putpalette(colours.astype(np.uint8).ravel().tolist())
    return picture


def _boundaries(segments: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour lies in another segment."""
    edge = np.zeros(segments.shape, bool)
    edge[:, :-1] |= segments[:, 1:] != segments[:, :-1]
    edge[:-1] |= segments[1:] != segments[:-1]
    return edge


def panel(
    image: Image.Image, result: ImageSegmentation, group_colours: np.ndarray, height: int = PANEL_HEIGHT
) -> Image.Image:
    """Photo | group labels | segments with their boundaries | foreground, each ``height`` px high."""
    width = max(1, round(image.size[0] * height / image.size[1]))
    photo = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    small = np.asarray(
        Image.fromarray(result.segments.astype(np.int32)).resize((width, height), Image.Resampling.NEAREST)
    )
    rgb = np.asarray(photo, np.float32)
    labels = 0.45 * rgb + 0.55 * colourise(result.groups[small], group_colours)
    segs = 0.6 * rgb + 0.4 * colourise(small, palette(int(small.max()) + 1, seed=1))
    segs[_boundaries(small)] = (255, 230, 0)
    fore = rgb * np.where(result.background[small], 0.2, 1.0)[..., None]
    views: list[np.ndarray] = [rgb, labels, segs, fore]
    canvas = np.concatenate([v.clip(0, 255).astype(np.uint8) for v in views], axis=1)
    return Image.fromarray(canvas)


@dataclass
class WrittenImage:
    """One image's gallery tile and the groups it holds (for the legend)."""

    item: GalleryItem
    groups: set[int]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def write_image(
    out_dir: str | Path, image_id: str, image: Image.Image, result: ImageSegmentation, group_colours: np.ndarray
) -> WrittenImage:
    """The four files of one image (module docstring); returns its gallery tile."""
    out = Path(out_dir)
    paths = {name: out / name / f"{image_id}.png" for name in ("labels", "segments", "foreground")}
    _save(_id_map(result.labels, group_colours), paths["labels"], compress_level=1)
    _save(_id_map(result.segments, palette(max(1, len(result.groups)), seed=1)), paths["segments"], compress_level=1)
    _save(Image.fromarray(np.where(result.foreground, 255, 0).astype(np.uint8)), paths["foreground"], compress_level=1)
    picture = out / "panels" / f"{image_id}.jpg"
    _save(panel(image, result, group_colours), picture, quality=88)
    used = np.flatnonzero(np.bincount(result.segments.ravel(), minlength=len(result.groups)))  # no sort of pixels
    present = set(np.unique(result.groups[used]).tolist())
    share = 100 * result.foreground.mean()
    caption = (
        f"{image.size[0]}x{image.size[1]}, {_count(len(used), 'segment')}, {_count(len(present), 'group')}, "
        f"foreground {share:.0f}%"
    )
    return WrittenImage(GalleryItem(picture, image_id, caption, paths), present)


def write_photo_gallery(
    out_dir: str | Path, written: Sequence[WrittenImage], num_groups: int, title: str, intro: str
) -> Path:
    """``index.html``: one wide tile per image and the colour of every group with the photos it is in."""
    colours = palette(num_groups)
    photos = [sum(g in w.groups for w in written) for g in range(num_groups)]
    legend = [(f"group {g} ({_count(n, 'photo')})", colours[g]) for g, n in enumerate(photos) if n]
    views = "each row: the photo | its group labels | its segments | its foreground (background dimmed)"
    return write_gallery(
        Path(out_dir) / "index.html",
        {"": [w.item for w in written]},
        title,
        intro=f"{intro} {views}.",
        legend=legend,
        tile_width=None,
    )
