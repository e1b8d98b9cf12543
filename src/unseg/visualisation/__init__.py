"""Pictures of segmentations: palettes, colour overlays, side-by-side panels."""

from .overlay import colourise, overlay, palette, save_panel

__all__ = ["colourise", "overlay", "palette", "save_panel"]
