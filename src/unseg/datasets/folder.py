"""Any folder of images, with an optional folder of label PNGs of the same stems."""

from __future__ import annotations

from pathlib import Path

from ..errors import LayoutError
from .base import Sample, SegmentationDataset, list_images, register_dataset, require


@register_dataset("folder")
class ImageFolder(SegmentationDataset):
    """``root`` holds the images; ``masks`` (optional) holds ``<stem>.png`` label maps.

    ``split`` is a sub-folder of ``root`` when one of that name exists, else ignored, so
    both ``ROOT/*.jpg`` and ``ROOT/{train,val}/*.jpg`` work. ``num_classes`` (when masks
    are given) marks ids >= num_classes as ignored; by default every id < 255 is a class.
    """

    splits = ()
    layout = (
        "  ROOT/*.{jpg,png,...}            images (or ROOT/SPLIT/*.{jpg,png,...})\n"
        "  MASKS/<image stem>.png          optional label maps, class ids, 255 = ignore"
    )

    def __init__(
        self, root: Path, split: str = "", masks: str | Path | None = None, num_classes: int | None = None
    ) -> None:
        folder = root / split if split and (root / split).is_dir() else root
        images = list_images(folder)
        samples = []
        mask_dir = require(Path(masks), self.layout) if masks is not None else None
        for path in images:
            mask = None
            if mask_dir is not None:
                mask = mask_dir / f"{path.stem}.png"
                if not mask.exists():
                    raise LayoutError(f"image {path} has no mask {mask}; expected layout:\n{self.layout}")
            samples.append(Sample(path.stem, path, mask))
        if num_classes is not None:
            self.class_names = tuple(f"class_{i}" for i in range(num_classes))
        super().__init__(folder, split, samples)
