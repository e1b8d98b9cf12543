"""Report folders: files, charts whose pixels say the right thing, a gallery of the best and worst images."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from unseg.evaluation.metrics import confusion_matrix, scores_from_confusion
from unseg.visualisation.report import per_image_miou, write_report

CLASSES = ["road", "car", "sky"]


def blobs(mask):
    """(centre row, centre col, height, width, area) of each connected blob of a bool image, largest first."""
    labels, _ = ndimage.label(mask)
    found = [
        (
            (s[0].start + s[0].stop) / 2,
            (s[1].start + s[1].stop) / 2,
            s[0].stop - s[0].start,
            s[1].stop - s[1].start,
            (labels[s] == i + 1).sum(),
        )
        for i, s in enumerate(ndimage.find_objects(labels))
    ]
    return sorted(found, key=lambda b: -b[4])


def colour_mask(png, colour, tol=30):
    rgb = np.array(Image.open(png).convert("RGB")).astype(int)
    return (np.abs(rgb - colour) < tol).all(axis=2)


def viridis_values(png):
    """Each pixel's value in [0, 1] read back through viridis; NaN where the colour is not viridis."""
    from matplotlib import colormaps

    table = (np.array(colormaps["viridis"].colors) * 255).astype(int)
    rgb = np.array(Image.open(png).convert("RGB")).astype(int).reshape(-1, 1, 3)
    dist = np.abs(rgb - table[None]).sum(axis=2)
    values = dist.argmin(axis=1) / 255
    values[dist.min(axis=1) > 6] = np.nan
    return values.reshape(Image.open(png).size[::-1])


def bright_cells(png):
    """Column rank of the brightest cell of each matrix row, read top to bottom: (0, 1, 2) on the diagonal."""
    with np.errstate(invalid="ignore"):
        cells = sorted(blobs(viridis_values(png) > 0.6)[:3])  # by row
    columns = [c[1] for c in cells]
    return tuple(int(r) for r in np.argsort(np.argsort(columns)))


def test_report_of_a_good_prediction(tmp_path, resolved_links):
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 3, size=(4, 20, 30)).astype(np.uint8)
    predictions = masks.copy()
    predictions[3] = (masks[3] + 1) % 3  # one image entirely wrong: the worst
    predictions[2, :5] = 3  # "no class" pixels (an unmatched cluster)
    masks[0, 0] = 255
    images = [Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)) for _ in range(4)]
    report = write_report(
        tmp_path / "r",
        CLASSES,
        predictions=predictions,
        masks=masks,
        ids=["a", "b", "c", "d"],
        load_image=images.__getitem__,
        examples=1,
        settings={"protocol": "test"},
    )
    for path in (report.metrics, report.iou_chart, report.confusion_image, report.gallery):
        assert path.is_file()
    metrics = json.loads(report.metrics.read_text())
    assert metrics["settings"] == {"protocol": "test"} and np.array(metrics["confusion"]).shape == (3, 4)
    assert [p["miou"] for p in metrics["per_image"]][3] == 0 and metrics["per_image"][0]["miou"] == 100
    expected = scores_from_confusion(confusion_matrix(masks, predictions, 3, 4))
    assert metrics["miou"] == pytest.approx(expected.miou) and set(metrics["iou_per_class"]) == set(CLASSES)
    assert bright_cells(report.confusion_image) == (0, 1, 2)
    assert (tmp_path / "r" / "gallery" / "best-01-a.png").is_file()  # a and b are perfect; ties keep order
    assert (tmp_path / "r" / "gallery" / "worst-01-d.png").is_file()
    assert Image.open(tmp_path / "r" / "gallery" / "worst-01-d.png").size == (180, 40)  # image | pred | gt
    links = resolved_links(report.gallery)
    assert {"metrics.json", "iou.png", "confusion.png"} <= set(links)


def test_confusion_image_shows_a_permutation_off_the_diagonal(tmp_path):
    conf = np.array([[0, 90, 10], [5, 0, 95], [80, 20, 0]])  # class c mostly predicted as c + 1
    report = write_report(tmp_path, CLASSES, confusion=conf)
    assert bright_cells(report.confusion_image) == (1, 2, 0)
    assert "per_image" not in json.loads(report.metrics.read_text())


def test_iou_bars_are_proportional_to_iou(tmp_path):
    conf = np.array([[90, 10, 0], [30, 30, 0], [0, 0, 20]])
    iou = scores_from_confusion(conf).iou  # 69.2, 42.9, 100
    report = write_report(tmp_path, CLASSES, confusion=conf)
    bars = sorted(blobs(colour_mask(report.iou_chart, (31, 119, 180)))[:3])  # by row: classes in order
    widths = np.array([b[3] for b in bars], dtype=float)
    np.testing.assert_allclose(widths / widths[2], iou / iou[2], atol=0.03)


def test_per_image_miou_by_hand():
    masks = np.array([[[0, 0, 1, 255]], [[255, 255, 255, 255]]], dtype=np.uint8)
    preds = np.array([[[0, 1, 1, 0]], [[0, 0, 0, 0]]], dtype=np.uint8)
    # image 0: class 0 IoU 1/2, class 1 IoU 1/2 -> 50; image 1 has no labelled pixel
    result = per_image_miou(preds, masks, 2)
    assert result[0] == pytest.approx(50) and np.isnan(result[1])
