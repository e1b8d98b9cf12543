"""The one dataset interface: (image, mask with 255 = ignore, id) read from files on disk.

Every dataset is a list of :class:`Sample` file records built from its folder layout,
plus a ``decode_mask`` that turns the stored label map into class ids. Decoding,
validation and error messages live here, once, so every layout behaves the same.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError, LayoutError
from ..registry import Registry

IGNORE_INDEX = 255
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_MAP_MODES = ("L", "P", "I", "I;16")  # PIL modes that store one class value per pixel


@dataclass(frozen=True)
class Sample:
    """Where one example lives on disk; ``mask`` is None for unlabelled data."""

    id: str
    image: Path
    mask: Path | None = None


class SegmentationDataset:
    """A split of a dataset: indexable, yields dicts ``{"image": PIL RGB, "mask": uint8 array | None, "id": str}``.

    Subclasses set ``name``, ``class_names`` and (when their files store something else
    than class ids) override ``decode_mask``; they build ``samples`` in ``__init__``.
    Formats other than images and label PNGs override ``load_image`` / ``read_mask``.
    """

    name: str = "dataset"
    class_names: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    layout: str = ""  # the expected folder layout, quoted in errors

    def __init__(self, root: str | Path, split: str, samples: Sequence[Sample]) -> None:
        self.root = Path(root)
        self.split = split
        self.samples = list(samples)
        if not self.samples:
            raise LayoutError(
                f"{self.name} split {split!r} under {self.root} holds no images; expected layout:\n{self.layout}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_masks(self) -> bool:
        return self.samples[0].mask is not None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image = self.load_image(sample)
        mask = self.load_mask(sample, image.size) if sample.mask is not None else None
        return {"image": image, "mask": mask, "id": sample.id}

    def load_image(self, sample: Sample) -> Image.Image:
        return read_image(sample.image)

    def load_mask(self, sample: Sample, image_size: tuple[int, int]) -> np.ndarray:
        """Class ids (uint8, 255 = ignore) of ``sample``; its size must equal the image's (W, H)."""
        assert sample.mask is not None
        raw = self.read_mask(sample.mask)
        mask = self.decode_mask(raw)
        if (mask.shape[1], mask.shape[0]) != tuple(image_size):
            raise ImageError(
                f"mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                f"{sample.image} is {image_size[0]}x{image_size[1]}; expected the same size"
            )
        return mask

    def read_mask(self, path: Path) -> np.ndarray:
        """The stored label map as an array, before ``decode_mask``. Default: a label PNG."""
        return read_label_map(path)

    def decode_mask(self, raw: np.ndarray) -> np.ndarray:
        """Stored label map -> class ids with 255 = ignore. Default: values >= num_classes are ignored."""
        mask = raw.astype(np.uint8, copy=True)
        if self.num_classes:
            mask[raw >= self.num_classes] = IGNORE_INDEX
        return mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"


def read_image(path: Path) -> Image.Image:
    """Decode an image file to RGB as a viewer shows it, or fail naming the file.

    The one place image files are opened (``unseg docs reliability``): EXIF orientation is applied,
    16- and 32-bit grey levels are scaled to 8 bits (a plain conversion would clip them to
    white), and every other mode (grey, palette, RGBA, CMYK, ...) goes through PIL's RGB conversion.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(ImageOps.exif_transpose(im))
    except FileNotFoundError:
        raise ImageError(f"image {path} does not exist") from None
    except Image.DecompressionBombError as exc:  # PIL refuses to decode it: the pixels would not fit in memory
        raise ImageError(f"image {path} is too large to decode ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"image {path} is corrupt or not an image ({exc})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB of a decoded image; high-bit-depth grey (modes I;16*, I, F) is scaled by its type's range."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image).astype(np.float64)
        peak = float(values.max(initial=0))
        if image.mode == "F":  # floats: [0, 1], else their own range
            top = max(peak, 1.0)
        else:  # 16-bit (PNG, TIFF), unless the values need more
            top = max(peak, 65535.0)
        grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return image.convert("RGB")


def read_label_map(path: Path, modes: Sequence[str] = LABEL_MAP_MODES) -> np.ndarray:
    """Decode a label PNG to an integer array, or fail naming the file.

    ``modes``: the PIL modes accepted; single-channel by default, ("RGB",) for datasets
    that encode class ids in colour channels (P images give their palette indices).
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in modes:
                raise ImageError(f"mask {path} has mode {im.mode}; expected a label map of mode {', '.join(modes)}")
            return np.array(im)
    except FileNotFoundError:
        raise ImageError(f"mask {path} does not exist") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"mask {path} is too large to decode ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageError(f"mask {path} is corrupt or not an image ({exc})") from None


def lookup_table(mapping: Mapping[int, int]) -> np.ndarray:
    """A raw value -> class id table over 0..max(mapping); values not in ``mapping`` are ignored."""
    table = np.full(max(mapping) + 1, IGNORE_INDEX, dtype=np.uint8)
    table[list(mapping)] = list(mapping.values())
    return table


def apply_lookup(raw: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Class ids (uint8) of a raw label map through ``table``; raw values outside it become ignore."""
    raw = raw.astype(np.int64)
    inside = (raw >= 0) & (raw < len(table))
    return np.where(inside, table[np.where(inside, raw, 0)], IGNORE_INDEX).astype(np.uint8)


def require(path: Path, layout: str) -> Path:
    """Return ``path`` if it exists, else a LayoutError naming it and the expected layout."""
    if not path.exists():
        raise LayoutError(f"missing {path}; expected layout:\n{layout}")
    return path


def read_id_list(path: Path, layout: str) -> list[str]:
    """Non-empty, stripped lines of a split file."""
    require(path, layout)
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


DATASETS: Registry[type[SegmentationDataset]] = Registry("dataset")
D = TypeVar("D", bound=SegmentationDataset)


def register_dataset(name: str) -> Callable[[type[D]], type[D]]:
    """Class decorator: make a dataset reachable as ``create_dataset(name, root, split)``."""

    def add(cls: type[D]) -> type[D]:
        cls.name = name
        DATASETS.add(name, cls)
        return cls

    return add


def create_dataset(name: str, root: str | Path, split: str, **kwargs: Any) -> SegmentationDataset:
    """Build a registered dataset; unknown names and splits fail with the known ones."""
    cls = DATASETS.get(name)
    if cls.splits and split not in cls.splits:
        raise LayoutError(f"dataset {name!r} has no split {split!r}; known splits: {', '.join(cls.splits)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise LayoutError(f"dataset root {root} is not a folder; expected layout:\n{cls.layout}")
    try:
        return cls(root, split, **kwargs)
    except PermissionError as exc:  # a folder or split file of the layout this user may not read
        raise LayoutError(
            f"{exc.filename or root} cannot be read ({exc.strerror}); dataset {name!r} needs to read its whole layout"
        ) from None


def list_datasets() -> list[str]:
    """The registered dataset names (``create_dataset`` takes them), sorted."""
    return DATASETS.names()
