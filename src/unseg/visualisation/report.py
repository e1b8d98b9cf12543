"""Evaluation reports: what a number looks like, for every evaluation command's ``--report DIR``.

A report folder holds ``metrics.json`` (scores, per-class IoU, the confusion, per-image
mIoU, the protocol), ``iou.png`` (per-class IoU bars), ``confusion.png`` (row-normalised:
row c shows where class c's pixels went) and ``index.html``, a gallery of the images
with the best and worst mIoU (image | prediction | ground truth).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..evaluation.metrics import ConfusionAccumulator, confusion_matrix, scores_from_confusion
from ..io import atomic_path, save_json
from .gallery import GalleryItem, write_gallery
from .overlay import palette, save_panel

__all__ = ["Report", "write_report", "per_image_miou", "dataset_report"]


@dataclass
class Report:
    root: Path
    metrics: Path
    iou_chart: Path
    confusion_image: Path
    gallery: Path


def per_image_miou(predictions: np.ndarray, masks: np.ndarray, num_classes: int) -> np.ndarray:
    """(N,) mIoU (%) of each image on its own; NaN for an image with no labelled pixel.

    Predictions hold class ids; ``num_classes`` means "no class" (an unmatched cluster).
    """
    return np.array(
        [
            scores_from_confusion(confusion_matrix(m, p, num_classes, num_classes + 1)).miou
            if (m != 255).any()
            else math.nan
            for p, m in zip(predictions, masks, strict=False)
        ]
    )


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _pyplot().close(fig)
    return path


def plot_iou(iou: np.ndarray, class_names: Sequence[str], miou: float, path: Path) -> Path:
    """Horizontal bars, one per class, on a fixed 0-100 axis (absent classes drawn as 0 and marked n/a)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(class_names) + 1.2))
    values = np.nan_to_num(np.asarray(iou, dtype=float))
    ax.barh(range(len(values)), values, color="#1f77b4")
    ax.set_yticks(
        range(len(values)), [n if not math.isnan(v) else f"{n} (n/a)" for n, v in zip(class_names, iou, strict=False)]
    )
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    ax.set_title(f"per-class IoU, mIoU {miou:.1f}")
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """Row-normalised confusion (rows: ground truth, columns: prediction, plus "none" when a column of
    unmatched predictions exists), viridis: bright = most of the row's pixels."""
    plt = _pyplot()
    conf = np.asarray(confusion, dtype=float)
    rows = conf.sum(axis=1, keepdims=True)
    norm = np.divide(conf, rows, out=np.zeros_like(conf), where=rows > 0)
    c = len(class_names)
    cols = list(class_names) + (["none"] if conf.shape[1] > c else [])
    fig, ax = plt.subplots(figsize=(0.45 * len(cols) + 2.5, 0.45 * c + 2))
    shown = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(shown, ax=ax, fraction=0.04, label="share of the class's pixels")
    ax.set_xticks(range(len(cols)), cols, rotation=90)
    ax.set_yticks(range(c), class_names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title("confusion (row-normalised)")
    fig.tight_layout()
    return _save(fig, path)


def write_report(
    out_dir: str | Path,
    class_names: Sequence[str],
    *,
    confusion: np.ndarray | None = None,
    predictions: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    ids: Sequence[str] | None = None,
    load_image: Callable[[int], Image.Image] | None = None,
    settings: dict[str, Any] | None = None,
    examples: int = 5,
    title: str = "evaluation report",
) -> Report:
    """Write a report folder from a confusion and/or per-image predictions.

    ``confusion``: (C, C) or matched (C, C + 1); computed from ``predictions`` and ``masks``
    ((N, H, W), class ids, ``C`` = no class, 255 = ignore) when not given. With predictions the
    gallery shows the ``examples`` best and worst images by their own mIoU, ``load_image(i)``
    giving image i (only those are loaded).
    """
    out = Path(out_dir)
    c = len(class_names)
    if confusion is None:
        if predictions is None or masks is None:
            raise ValueError("a report needs a confusion, or predictions and masks to compute it")
        acc = ConfusionAccumulator(c, c + 1)
        acc.update(masks, predictions)
        confusion = acc.matrix
    scores = scores_from_confusion(confusion)
    ids = list(ids) if ids is not None else [str(i) for i in range(0 if predictions is None else len(predictions))]
    summary = scores.to_dict()
    metrics: dict[str, Any] = {
        **summary,
        "class_names": list(class_names),
        "iou_per_class": dict(zip(class_names, summary["iou"], strict=False)),
        "confusion": np.asarray(confusion).tolist(),
        "settings": settings or {},
    }
    sections: dict[str, list[GalleryItem]] = {}
    if predictions is not None and masks is not None:
        image_miou = per_image_miou(predictions, masks, c)
        metrics["per_image"] = [
            {"id": i, "miou": None if math.isnan(v) else float(v)} for i, v in zip(ids, image_miou, strict=False)
        ]
        if load_image is not None:
            scored = [i for i in range(len(image_miou)) if not math.isnan(image_miou[i])]
            best = sorted(scored, key=lambda i: (-image_miou[i], i))[:examples]  # ties: dataset order
            worst = sorted(scored, key=lambda i: (image_miou[i], i))[:examples]
            colours = palette(c)
            for heading, picks in ((f"best {len(best)} images", best), (f"worst {len(worst)} images", worst)):
                tag = heading.split()[0]
                items = []
                for rank, i in enumerate(picks, 1):
                    name = f"{tag}-{rank:02d}-{ids[i].replace('/', '_')}.png"
                    panel = save_panel(
                        out / "gallery" / name, load_image(i), np.asarray(predictions[i]), colours, np.asarray(masks[i])
                    )
                    items.append(GalleryItem(panel, ids[i], f"mIoU {image_miou[i]:.1f}"))
                sections[heading] = items
    metrics_path = out / "metrics.json"
    save_json(metrics, metrics_path)
    iou_path = plot_iou(scores.iou, class_names, scores.miou, out / "iou.png")
    conf_path = plot_confusion(confusion, class_names, out / "confusion.png")
    sections = {
        "per-class IoU and confusion": [
            GalleryItem(iou_path, "per-class IoU"),
            GalleryItem(conf_path, "confusion, row-normalised"),
        ],
        **sections,
    }
    intro = (
        f"mIoU {scores.miou:.1f}, pixel accuracy {scores.pixel_accuracy:.1f}. "
        "Panels: image | prediction | ground truth (black: ignored or no class)."
    )
    gallery = write_gallery(
        out / "index.html",
        sections,
        title,
        intro=intro,
        links={"metrics.json": metrics_path},
        legend=list(zip(class_names, palette(c), strict=True)),
    )
    return Report(out, metrics_path, iou_path, conf_path, gallery)


def dataset_report(
    out_dir: str | Path,
    dataset: Any,
    cache: Any,
    predictions: np.ndarray,
    settings: dict[str, Any] | None = None,
    title: str = "evaluation report",
    examples: int = 5,
) -> Report:
    """:func:`write_report` for predictions (N, H, W) in the order of ``cache`` (a FeatureCache of
    ``dataset``): masks at the predictions' size and the images are read from the dataset."""
    from ..features.cache import cached_masks

    masks = cached_masks(cache, dataset, tuple(predictions.shape[-2:]))
    num_classes = dataset.num_classes or int(masks[masks != 255].max(initial=0)) + 1
    names = list(dataset.class_names) or [f"class_{i}" for i in range(num_classes)]
    index = {s.id: s for s in dataset.samples}
    return write_report(
        out_dir,
        names,
        predictions=predictions,
        masks=masks,
        ids=cache.ids,
        load_image=lambda i: dataset.load_image(index[cache.ids[i]]),
        settings=settings,
        title=title,
        examples=examples,
    )
