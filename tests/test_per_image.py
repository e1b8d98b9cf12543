"""The per-image protocol: hand-computed IoUs, and ``unseg eval segments`` end to end on the shipped sample."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unseg.cli import main
from unseg.demo import sample_root
from unseg.evaluation.per_image import PerImageScores, image_ious


def test_image_ious_match_segments_to_classes_one_to_one():
    gt = np.array([[0, 0, 0, 1], [0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[5, 5, 7, 7], [5, 5, 7, 7], [5, 9, 9, 9]])
    # 10 pixels count (2 are ignored). Class 0 (5 px) and segment 5 (5 px) share 4: IoU 4 / 6; class 1 (3 px)
    # and segment 7 (4 px) share 3: 3 / 4; class 2 (2 px) and segment 9 (1 px counted) share 1: 1 / 2, better
    # than its 1 / 6 with segment 5, which class 0 holds; class 3 is absent
    np.testing.assert_allclose(image_ious(gt, pred, 4), [100 * 4 / 6, 75.0, 50.0, np.nan])
    # one segment for everything: only one class can have it (class 0: 5 / 10), the others score 0
    np.testing.assert_allclose(image_ious(gt, np.zeros_like(pred), 3), [50.0, 0.0, 0.0])


def test_per_image_scores_average_over_images_and_skip_absent_classes():
    scores = PerImageScores(3)
    scores.add(np.array([[0, 0, 1]]), np.array([[4, 4, 4]]))  # class 0 takes the segment: 2 / 3; class 1: 0
    scores.add(np.array([[2, 2]]), np.array([[1, 1]]))  # class 2 only: 100
    assert scores.miou == pytest.approx((100 / 3 + 100) / 2)
    np.testing.assert_allclose(scores.class_iou, [200 / 3, 0.0, 100.0])
    assert scores.segments == [1, 1]
    with pytest.raises(ValueError, match="outside 0..2"):
        scores.add(np.array([[3]]), np.array([[0]]))


@pytest.mark.slow
def test_cli_eval_segments_scores_spectral_and_kmeans_the_same_way(tmp_path, capsys):
    common = [
        "--root",
        str(sample_root()),
        "--input-size",
        "224",
        "--cache-dir",
        str(tmp_path / "c"),
        "--workers",
        "0",
        "--seeds",
        "2",
    ]
    for method in ("spectral", "kmeans"):
        out = tmp_path / f"{method}.json"
        assert main(["eval", "segments", "--method", method, *common, "--json", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "per image" in printed and "dataset-level (11 groups" in printed and "seeds [0, 1]" in printed
        result = json.loads(out.read_text())
        assert result["settings"]["method"] == method and result["settings"]["num_images"] == 20
        per_image = [p["miou"] for p in result["per_image"]]
        dataset = [d["miou"] for d in result["dataset"]]
        assert len(per_image) == len(dataset) == 2 and all(5 < v < 90 for v in per_image + dataset)
        # each image's segments are matched to its own classes: never below one shared matching for the split
        if method == "kmeans":
            assert min(per_image) >= min(dataset) - 5
