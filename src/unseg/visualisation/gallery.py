"""A static HTML gallery of segmentations: one page, relative links only, so the folder can be moved or served.

Every picture and link must be a file inside the gallery's folder; a missing one is an
error when the page is written, so a written gallery never has a dead link.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ..io import atomic_path

__all__ = ["GalleryItem", "write_gallery"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.grid { display: flex; flex-wrap: wrap; gap: 14px; }
figure { margin: 0; max-width: 100%; }
figure img { width: 100%; border: 1px solid #ccc; }
figcaption { font-size: 0.85em; }
.legend span { display: inline-block; margin: 0 10px 4px 0; font-size: 0.85em; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: middle; }
"""


@dataclass
class GalleryItem:
    """One tile: a picture, a title, an optional caption and links (text -> file), all inside the gallery folder."""

    picture: Path
    title: str
    caption: str = ""
    links: Mapping[str, Path] = field(default_factory=dict)


def _href(path: Path, root: Path) -> str:
    """URL of ``path`` relative to ``root``; the file must exist and lie under ``root``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gallery entry {path} does not exist")
    rel = os.path.relpath(path.resolve(), root.resolve())
    if rel.startswith(".."):
        raise ValueError(f"gallery entry {path} lies outside the gallery folder {root}")
    return quote(Path(rel).as_posix())


def write_gallery(
    path: str | Path,
    sections: Mapping[str, Sequence[GalleryItem]],
    title: str,
    intro: str = "",
    links: Mapping[str, Path] | None = None,
    legend: Sequence[tuple[str, np.ndarray | Sequence[int]]] = (),
    tile_width: int | None = 360,
) -> Path:
    """Write the page ``path`` (e.g. ``out/index.html``): ``sections`` (heading -> tiles; "" = no
    heading), page-level ``links`` (e.g. metrics.json), a colour ``legend`` of (name, RGB) and each
    tile's width in px (None: the picture's own, at most the page's)."""
    path = Path(path)
    root = path.parent
    esc = html.escape
    parts = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>',
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    if intro:
        parts.append(f"<p>{esc(intro)}</p>")
    if links:
        parts.append("<p>" + " · ".join(f'<a href="{_href(p, root)}">{esc(t)}</a>' for t, p in links.items()) + "</p>")
    if len(legend):
        swatches = "".join(
            f'<span><i style="background: rgb({int(c[0])},{int(c[1])},{int(c[2])})"></i>{esc(n)}</span>'
            for n, c in legend
        )
        parts.append(f'<div class="legend">{swatches}</div>')
    for heading, items in sections.items():
        if heading:
            parts.append(f"<h2>{esc(heading)}</h2>")
        parts.append('<div class="grid">')
        for item in items:
            src = _href(item.picture, root)
            extra = " ".join(f'<a href="{_href(p, root)}">{esc(t)}</a>' for t, p in item.links.items())
            caption = f"<b>{esc(item.title)}</b> {esc(item.caption)} {extra}".strip()
            width = f' style="width: {tile_width}px"' if tile_width else ""
            parts.append(
                f'<figure{width}><a href="{src}"><img src="{src}" alt="{esc(item.title)}" loading="lazy"></a>'
                f"<figcaption>{caption}</figcaption></figure>"
            )
        parts.append("</div>")
    parts.append("</body></html>\n")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path
