"""CBFE and community detection (``unseg docs methods``) on synthetic cases with known answers,
and the pipeline on the sample."""

import json

import numpy as np
import pytest
import torch

from unseg import Source, fully_unsupervised
from unseg.demo import sample_root
from unseg.features import foreground_mask
from unseg.features.cache import cached_masks
from unseg.unsupervised.cbfe import (
    NOISY_MASS,
    cluster_precisions,
    foreground_targets,
    round_threshold,
    search_threshold,
)
from unseg.unsupervised.community import (
    cooccurrence,
    cooccurrence_graph,
    cooccurrence_offsets,
    infomap_communities,
    merge_confusion,
)
from unseg.unsupervised.pipeline import SEARCH_SPACE, search_hyper_parameters

# --- co-occurrence and Infomap ----------------------------------------------------------


def test_offsets_are_the_8_neighbourhood_and_graycomatrix_distance_2():
    offsets = cooccurrence_offsets()
    assert set(offsets[:8]) == {(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)} - {(0, 0)}
    # graycomatrix rounds sin/cos * 2: straight steps of 2, diagonals stay at (±1, ±1)
    assert set(offsets[8:]) == {(0, 2), (2, 0), (0, -2), (-2, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)}


def test_cooccurrence_equals_brute_force_counting():
    rng = np.random.default_rng(0)
    maps = rng.integers(0, 5, size=(3, 7, 6))
    maps[2] = 4  # a one-cluster image: no neighbour pair, holds no cluster for the average
    expected, images = np.zeros((5, 5)), np.zeros(5)
    for m in maps:
        counts = np.zeros((5, 5))
        for r in range(m.shape[0]):
            for c in range(m.shape[1]):
                for dr, dc in cooccurrence_offsets():
                    if 0 <= r + dr < m.shape[0] and 0 <= c + dc < m.shape[1] and m[r, c] != m[r + dr, c + dc]:
                        counts[m[r, c], m[r + dr, c + dc]] += 1
        rows = counts.sum(1)
        expected[rows > 0] += counts[rows > 0] / rows[rows > 0, None]
        images += rows > 0
    expected /= images[:, None]
    np.testing.assert_allclose(cooccurrence(maps, 5), expected)


def planted_maps(num_communities: int = 4, size: int = 10, images: int = 60, seed: int = 0) -> np.ndarray:
    """Images tiled with 4x4-pixel blocks of clusters from one community, plus one stray block."""
    rng = np.random.default_rng(seed)
    maps = []
    for i in range(images):
        community = i % num_communities
        blocks = rng.integers(0, size, (6, 6)) + community * size
        blocks[rng.integers(6), rng.integers(6)] = rng.integers(num_communities * size)  # noise across communities
        maps.append(np.kron(blocks, np.ones((4, 4), dtype=np.int64)))
    return np.stack(maps)


def test_community_detection_recovers_planted_communities():
    maps = planted_maps()
    matrix = cooccurrence(maps, 40)
    edges = cooccurrence_graph(matrix, weight_threshold=0.02)
    assert edges and all(i < j and w == min(matrix[i, j], matrix[j, i]) >= 0.02 for i, j, w in edges)
    planted = np.repeat(np.arange(4), 10)
    for seed in range(3):  # Infomap seeds 1..3
        found = infomap_communities(edges, 40, markov_time=1.0, preferred_modules=4, seed=seed)
        assert len(set(found)) == 4
        # the same partition up to the naming of communities
        assert all(len(set(found[planted == c])) == 1 for c in range(4))
        conf = merge_confusion(np.eye(4, dtype=np.int64)[planted].T, found)  # planted x found
        assert (np.count_nonzero(conf, axis=1) == 1).all()


def test_nodes_without_edges_share_one_extra_label():
    found = infomap_communities([(0, 1, 0.5), (2, 3, 0.5)], 6, markov_time=1.0, preferred_modules=None, seed=0)
    assert found[0] == found[1] != found[2] == found[3]
    assert found[4] == found[5] == found.max() == 2
    assert (infomap_communities([], 3, 1.0, None, 0) == 0).all()


def test_search_stays_in_the_published_space_and_returns_the_best_trial():
    best, trials = search_hyper_parameters(lambda p: -abs(p["k"] - 149) - p["weight_threshold"], trials=6, seed=0)
    assert len(trials) == 6
    for t in trials:
        for name, (lo, hi, step) in SEARCH_SPACE.items():
            assert lo <= t[name] <= hi + 1e-9 and abs((t[name] - lo) / step - round((t[name] - lo) / step)) < 1e-6
    assert best == {k: v for k, v in max(trials, key=lambda t: t["train_miou"]).items() if k != "train_miou"}


# --- CBFE ---------------------------------------------------------------------------------


def test_noisy_foreground_keeps_the_salient_blob_and_drops_specks():
    sal = np.full((1, 12, 12), 0.01)
    sal[0, 3:7, 3:7] = 1.0  # the object
    sal[0, 10, 10] = 0.9  # a one-token speck: in the top mass, but a component of 1
    mask = foreground_mask(torch.from_numpy(sal).float(), keep_mass=NOISY_MASS).bool().numpy()[0]
    # the blur takes mass off the blob's corners: its core is kept, nothing far from it is
    assert mask[4:6, 3:7].all() and mask[3:7, 4:6].all() and not mask[10, 10] and mask.sum() <= 16


def test_cluster_precisions_average_over_images_holding_the_cluster():
    clusters = np.array([[[0, 0, 1, 1]], [[0, 2, 2, 2]]])
    fg = np.array([[[1, 0, 1, 1]], [[1, 1, 0, 0]]], dtype=bool)
    # cluster 0: image 0 1/2, image 1 1/1 -> 0.75; cluster 1: 1; cluster 2: 1/3; cluster 3 absent: 0
    np.testing.assert_allclose(cluster_precisions(clusters, fg, 4), [0.75, 1.0, 1 / 3, 0.0])


def test_threshold_search_picks_the_known_cut():
    k = 20
    rng = np.random.default_rng(0)
    # 4 images of 10x10 tokens, each holding every cluster 5 times; clusters 13..19 are the objects
    clusters = np.stack([rng.permutation(np.repeat(np.arange(k), 5)).reshape(10, 10) for _ in range(4)])
    labels = np.where(np.kron(clusters, np.ones((2, 2), dtype=np.int64)) >= 13, 1, 0).astype(np.uint8)
    labels[0, :2, :2] = 255  # ignored pixels do not count
    precisions = np.arange(k) / k  # cluster i has precision i / 20
    search = search_threshold(precisions, clusters, labels)
    assert search.cuts == [11, 12, 13, 14]  # 55% .. 75% of 20 clusters to background
    assert search.cut == 13 and search.threshold == 0.65
    assert search.ious[2] == pytest.approx(100.0) and max(search.ious[:2] + search.ious[3:]) < 100
    assert round_threshold(0.67) == 0.65 and round_threshold(0.99) == 0.95 and round_threshold(0.025) == 0.0


def test_foreground_targets_mark_background_classes_and_keep_ignore():
    masks = np.array([[0, 1, 2, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(foreground_targets(masks, [0, 2]), [[0, 1, 0, 255]])


# --- the pipeline, end to end on the shipped sample ---------------------------------------


def test_fully_unsupervised_on_the_sample(tmp_path):
    source = Source(
        dataset="camvid", root=sample_root(), input_size=224, cache_dir=tmp_path, num_workers=0, progress=False
    )
    result = fully_unsupervised(
        source,
        "val",
        "val",
        background=["sky", "road", "building", "pavement", "tree"],
        trials=2,
        runs=2,
        kmeans_seeds=[0],
        fg_k=60,
        niter=10,
        nredo=1,
        mask_size=56,
    )
    assert [s.stage for s in result.stages] == ["kmeans", "cbfe", "cd"]
    cd = result.stage("cd")
    assert len(cd.miou) == 2 and cd.settings["infomap_seeds"] == [1, 2]
    # the first run's mIoU, by hand from its kept predictions (class 11 = no class) and the val masks
    val = source.build_dataset("val")
    masks = cached_masks(source.features(val), val, (56, 56))
    labelled = masks != 255
    conf = np.zeros((11, 12))
    np.add.at(conf, (masks[labelled], cd.predictions[labelled]), 1)
    tp = np.diag(conf[:, :11])
    union = conf.sum(1) + conf[:, :11].sum(0) - tp
    assert cd.miou[0] == pytest.approx(100 * np.mean(tp[union > 0] / union[union > 0]))
    assert cd.settings["preferred_modules"] == 10 and cd.predictions.shape == (20, 56, 56)
    assert len(result.search) == 2 and result.hyper_parameters["source"].startswith("TPE search on val")
    assert 99 <= result.hyper_parameters["k"] <= 249
    assert result.foreground["threshold"] in np.round(np.arange(0, 1, 0.05), 2)
    # train and val are the same images here: CBFE's masks and targets must agree on both halves
    assert result.foreground["foreground_iou_train"] == pytest.approx(result.foreground["foreground_iou_val"])
    assert "mIoU" in result.summary() and result.to_dict()["settings"]["num_classes"] == 11
    # the API's text and reports: the CLI only prints and calls these
    text = result.describe()
    assert text.startswith("fully unsupervised segmentation on camvid/val (20 images)") and "masks 56x56" in text
    assert f"k={result.hyper_parameters['k']}" in text and text.endswith(result.summary().splitlines()[-1])
    reports = result.write_report(tmp_path / "report")
    assert [r.root.name for r in reports] == ["kmeans", "cbfe", "cd"]
    assert json.loads(reports[2].metrics.read_text())["miou"] == pytest.approx(cd.miou[0])
