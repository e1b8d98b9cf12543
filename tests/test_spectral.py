"""The per-image spectral method and the folder vocabulary (``unseg docs photos``): against the generalised
eigenproblem and direct computations, and on synthetic scenes whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist

from unseg.errors import SettingError
from unseg.unsupervised.per_image import fit_vocabulary, plan_folder
from unseg.unsupervised.spectral import (
    SpectralSettings,
    alike_blocks,
    background_segments,
    colour_affinity,
    merge_segments,
    oversegment,
    refine_segments,
    segment_sums,
    spectral_embedding,
)

STRIDE = 8


def scene(shapes: int, size: tuple[int, int] = (96, 128), seed: int = 0, codes: np.ndarray | None = None):
    """A picture of flat-coloured shapes (disks and rectangles of distinct colours, apart, on a background) and
    features that agree: each region has its own random code; a token's feature is the mean code of
    the pixels it covers (mixed on the shapes' edges, as a backbone's would be), plus a little noise.
    Returns (region map (H, W), guide (3, H, W), features (D, H/8, W/8))."""
    rng = np.random.default_rng(seed)
    h, w = size
    regions = np.zeros(size, np.int64)
    yy, xx = np.mgrid[:h, :w]
    for s in range(1, shapes + 1):  # one shape per quarter of the picture: shapes never touch
        cy, cx = (
            (s - 1) // 2 * h // 2 + h // 4 + rng.integers(-4, 5),
            (s - 1) % 2 * w // 2 + w // 4 + rng.integers(-4, 5),
        )
        if s % 2:
            regions[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(12, 18) ** 2] = s
        else:
            regions[(abs(yy - cy) < rng.integers(8, 14)) & (abs(xx - cx) < rng.integers(10, 18))] = s
    colours = rng.random((shapes + 1, 3))
    codes = rng.normal(size=(shapes + 1, 64)) if codes is None else codes
    pixel_codes = codes[regions]  # (H, W, D)
    feats = pixel_codes.reshape(h // STRIDE, STRIDE, w // STRIDE, STRIDE, -1).mean((1, 3))
    feats = feats + 0.01 * rng.normal(size=feats.shape)
    guide = torch.from_numpy(colours[regions]).permute(2, 0, 1).float()
    return regions, guide, feats.transpose(2, 0, 1).astype(np.float32)


def segment_scene(regions, guide, feats, settings=SpectralSettings()):  # noqa: B008 - a frozen dataclass
    over = oversegment(feats, settings)
    sums, counts = segment_sums(feats, over)
    centre = sums.sum(0) / counts.sum()
    lut = merge_segments(over, sums, counts, centre, settings.merge_threshold, settings.segments, settings.min_tokens)
    return refine_segments(lut[over], guide, settings)


def agreement(regions: np.ndarray, segments: np.ndarray) -> float:
    """Share of pixels whose segment is its region's majority segment (1.0: one segment per region)."""
    good = 0
    for r in np.unique(regions):
        values, counts = np.unique(segments[regions == r], return_counts=True)
        good += counts.max()
    return good / regions.size


@pytest.mark.parametrize("shapes", [1, 2, 3, 4])
def test_one_segment_per_shape_with_boundaries_on_the_shape_edges(shapes):
    regions, guide, feats = scene(shapes, seed=shapes)
    segments = segment_scene(regions, guide, feats)
    # the number of segments comes from the data: one per region (the shapes and the background)
    assert len(np.unique(segments)) == len(np.unique(regions)) == shapes + 1
    # each region is one segment, at the pixel level: the edges are the shapes' own, not the 8-px token grid's
    assert agreement(regions, segments) > 0.995
    assert agreement(segments, regions) > 0.995
    edges = regions[:, 1:] != regions[:, :-1]
    assert (segments[:, 1:] != segments[:, :-1])[edges].mean() > 0.95


def test_a_fixed_number_of_segments_is_kept():
    regions, guide, feats = scene(4, seed=4)
    segments = segment_scene(regions, guide, feats, SpectralSettings(segments=2))
    assert len(np.unique(segments)) == 2
    with pytest.raises(SettingError, match="segments"):
        SpectralSettings(segments=30)


def test_embedding_solves_the_generalised_eigenproblem():
    rng = np.random.default_rng(0)
    x = rng.random((40, 5))
    w = np.exp(-(cdist(x, x) ** 2))
    d = np.diag(w.sum(1))
    expected_values, expected = scipy.linalg.eigh(d - w, d)  # (D - W) v = λ D v, vᵀ D v = 1
    values, vectors = spectral_embedding(w.astype(np.float32), 6)
    np.testing.assert_allclose(values, expected_values[:6], atol=1e-5)
    for k in range(1, 6):  # the same vectors up to their sign (the first is constant)
        a, b = vectors[:, k], expected[:, k]
        assert min(np.abs(a - b).max(), np.abs(a + b).max()) < 1e-3
        assert (a > 0).mean() <= 0.5 or (a > 0).all()  # the sign rule: the smaller side positive


def test_blocks_of_equal_tokens_give_the_full_problems_solution():
    """Where every lumped block's tokens are equal, the projected problem's smallest eigenpairs are the full
    generalised problem's (the vectors the projection drops are differences inside a block, λ = 1)."""
    rng = np.random.default_rng(1)
    h, w = 6, 7  # an odd width: the last column stays token by token
    x = rng.random((h, w, 3))
    x[0:2, 0:2] = x[0, 0]
    x[2:4, 4:6] = x[2, 4]
    x[4:6, 2:4] = x[5, 3]
    tokens = x.reshape(h * w, 3)
    affinity = np.exp(-4 * cdist(tokens, tokens) ** 2)
    d = np.diag(affinity.sum(1))
    expected_values, expected = scipy.linalg.eigh(d - affinity, d)  # the definition, every token an unknown
    unit = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
    blocks = alike_blocks(unit, h, w, 0.999999)
    assert blocks.max() + 1 == h * w - 9  # three blocks of four tokens: 9 unknowns fewer
    values, vectors = spectral_embedding(affinity.astype(np.float32), 8, blocks)
    np.testing.assert_allclose(values, expected_values[:8], atol=1e-5)
    for k in range(1, 8):
        a, b = vectors[:, k], expected[:, k]
        assert min(np.abs(a - b).max(), np.abs(a + b).max()) < 1e-3


def test_alike_blocks_lumps_only_blocks_whose_tokens_are_all_alike():
    unit = np.zeros((4, 5, 2))
    unit[..., 0] = 1  # every token alike ...
    unit[0, 1] = (0.6, 0.8)  # ... but one of the first block (cosine 0.6 to its three neighbours)
    blocks = alike_blocks(unit.reshape(20, 2), 4, 5, 0.7).reshape(4, 5)
    expected = np.array([[0, 1, 2, 2, 3], [4, 5, 2, 2, 6], [7, 7, 8, 8, 9], [7, 7, 8, 8, 10]])  # ids by first token
    np.testing.assert_array_equal(blocks, expected)
    assert len(np.unique(alike_blocks(unit.reshape(20, 2), 4, 5, 0.5))) == 20 - 4 * 3  # at 0.5 the first lumps too


def test_merging_joins_the_most_similar_neighbours_until_the_threshold():
    labels = np.array([[0, 1, 2, 3]])  # four segments in a row: 0 and 3 are alike but not neighbours
    means = np.array([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [1, 0, 0.05]])
    sums, counts = means * 2, np.full(4, 2)
    centre = np.zeros(3)
    np.testing.assert_array_equal(merge_segments(labels, sums, counts, centre, 0.9), [0, 0, 1, 2])
    np.testing.assert_array_equal(merge_segments(labels, sums, counts, centre, 1.0), [0, 1, 2, 3])
    np.testing.assert_array_equal(merge_segments(labels, sums, counts, centre, 0.5, segments=1), [0, 0, 0, 0])
    # centred on another reference, other segments are alike: seen from (0.95, 0.05, 0), 1 and 2 point the same way
    np.testing.assert_array_equal(merge_segments(labels, sums, counts, np.array([0.95, 0.05, 0]), 0.9), [0, 1, 1, 2])


def test_background_hugs_the_border():
    seg = np.zeros((10, 10), np.int64)
    seg[3:7, 3:7] = 1  # an object inside the frame
    seg[:, 8:] = 2  # a strip along the right border
    np.testing.assert_array_equal(background_segments(seg, 3), [True, False, True])


def test_colour_affinity_links_each_pixel_to_its_nearest_in_colour_and_position():
    rng = np.random.default_rng(1)
    image = rng.random((4, 5, 3))
    got = colour_affinity(image, neighbours=(3,), position_weights=(2.0,))
    y, x = np.divmod(np.arange(20), 5)
    points = np.column_stack([image.reshape(20, 3), 2.0 * x / 4, 2.0 * y / 3])
    expected = np.zeros((20, 20))
    for i, row in enumerate(cdist(points, points)):
        for j in np.argsort(row, kind="stable")[:3]:  # itself first, then its two nearest
            expected[i, j] += 1
            expected[j, i] += 1
    np.testing.assert_array_equal(got, expected)


def test_identical_regions_in_two_images_get_the_same_group(tmp_path, feature_cache):
    codes = np.random.default_rng(9).normal(size=(3, 64))
    # image a: code 0 background, code 1 shape; image b: code 2 background, code 1 shape
    _, _, fa = scene(1, seed=1, codes=codes[[0, 1]])
    _, _, fb = scene(1, seed=2, codes=codes[[2, 1]])
    cache = feature_cache(tmp_path / "cache", np.stack([fa, fb]))
    plan = plan_folder(cache, groups=3)
    shape_groups, background_groups = [], []
    for features, segments, groups in zip((fa, fb), plan.segments, plan.groups, strict=True):
        tokens = features.reshape(64, -1).T
        for s in range(segments.max() + 1):
            on_shape = (tokens[segments.ravel() == s] @ codes[1]).mean() > 0.5 * codes[1] @ codes[1]
            (shape_groups if on_shape else background_groups).append(groups[s])
    assert len(set(shape_groups)) == 1
    assert set(background_groups).isdisjoint(shape_groups) and len(set(background_groups)) == 2


def test_vocabulary_is_ward_on_unit_descriptors_and_checks_its_size():
    x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0.05]])
    groups = fit_vocabulary(x, 3)
    assert groups[0] == groups[1] and groups[2] == groups[3] and len(set(groups)) == 3
    np.testing.assert_array_equal(fit_vocabulary(x * 7, 3), groups)  # lengths do not count
    with pytest.raises(SettingError, match="6 groups"):
        fit_vocabulary(x, 6)
