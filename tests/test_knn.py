"""STEGO data preparation: the kNN table equals brute force and is cached beside the features;
five-crop writes exact crops once, resumably, as a readable dataset."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from unseg.datasets import create_dataset
from unseg.errors import CacheError, ImageError
from unseg.methods.stego import knn
from unseg.methods.stego.fivecrop import five_crop_dataset


@pytest.fixture
def feats() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(40, 16, 3, 4)).astype(np.float32)


def brute_force(feats: np.ndarray, k: int) -> np.ndarray:
    desc = feats.astype(np.float64).mean(axis=(2, 3))
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    return np.argsort(-(desc @ desc.T), axis=1, kind="stable")[:, :k]


def test_descriptors_are_unit_spatial_means(tmp_path, feats, feature_cache):
    desc = knn.global_descriptors(feature_cache(tmp_path, feats, shard_size=7), batch=3)
    expected = feats.mean(axis=(2, 3))
    np.testing.assert_allclose(desc, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)
    assert desc.dtype == np.float32


@pytest.mark.parametrize("batch", [4096, 8])
def test_faiss_knn_equals_brute_force_with_self_first(tmp_path, feats, batch, feature_cache):
    cache = feature_cache(tmp_path, feats, shard_size=7)
    table = knn.knn_indices(cache, k=10, batch=batch)
    assert table.dtype == np.int64 and table.shape == (40, 10)
    np.testing.assert_array_equal(table, brute_force(feats, 10))
    np.testing.assert_array_equal(table[:, 0], np.arange(40))


def test_self_comes_first_among_duplicate_images():
    desc = np.repeat(np.eye(4, dtype=np.float32), 3, axis=0)  # three identical images per descriptor
    table = knn.nearest_neighbours(desc, k=3, batch=5)
    np.testing.assert_array_equal(table[:, 0], np.arange(12))
    assert all(set(row) == set(range(i - i % 3, i - i % 3 + 3)) for i, row in enumerate(table))


def test_knn_table_is_reused_and_rebuilt_when_it_does_not_fit(tmp_path, feats, monkeypatch, feature_cache):
    cache = feature_cache(tmp_path, feats, shard_size=7)
    table = knn.knn_indices(cache, k=5)
    path = tmp_path / "knn-5.npy"
    mtime = path.stat().st_mtime_ns

    def no_recompute(*args, **kwargs):
        raise AssertionError("the stored table should have been reused")

    with monkeypatch.context() as m:
        m.setattr(knn, "nearest_neighbours", no_recompute)
        np.testing.assert_array_equal(knn.knn_indices(cache, k=5), table)
        np.testing.assert_array_equal(knn.load_knn(cache, k=5, build=False), table)
    assert path.stat().st_mtime_ns == mtime

    np.testing.assert_array_equal(knn.knn_indices(cache, k=3), table[:, :3])  # another k: its own file
    assert (tmp_path / "knn-3.npy").exists()
    np.save(path, table[:10])  # a table of another cache
    np.testing.assert_array_equal(knn.knn_indices(cache, k=5), table)
    assert np.load(path).shape == (40, 5)


def test_missing_table_without_build_names_how_to_build_it(tmp_path, feats, feature_cache):
    cache = feature_cache(tmp_path, feats, shard_size=7)
    with pytest.raises(CacheError, match=r"unseg stego knn.*knn_indices\(cache, k=30\)"):
        knn.load_knn(cache, build=False)
    with pytest.raises(ValueError, match="k = 41"):
        knn.knn_indices(cache, k=41)


# --- five-crop -------------------------------------------------------------------------------

H, W = 8, 12
# (top, left) of each crop of 4 x 6: top-left, top-right, bottom-left, bottom-right, center
CROPS = [(0, 0), (0, 6), (4, 0), (4, 6), (2, 3)]


def make_labelled_folder(root, n: int = 2):
    """``n`` 8x12 images whose pixels encode (image, row, col); masks hold ids 0..10 and 255."""
    rows, cols = np.mgrid[:H, :W]
    (root / "imgs").mkdir(parents=True)
    (root / "masks").mkdir()
    images, masks = [], []
    for i in range(n):
        image = np.stack([rows * 20, cols * 20, np.full_like(rows, 100 * i)], axis=-1).astype(np.uint8)
        mask = ((rows * W + cols + i) % 11).astype(np.uint8)
        mask[:, 5] = 255
        Image.fromarray(image).save(root / "imgs" / f"im{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")
        images.append(image)
        masks.append(mask)
    dataset = create_dataset("folder", root / "imgs", "", masks=root / "masks", num_classes=11)
    dataset.class_names = tuple(f"name{c}" for c in range(11))
    return dataset, images, masks


def mtimes(folder) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_five_crops_have_the_right_pixels_and_mask_ids(tmp_path):
    dataset, images, masks = make_labelled_folder(tmp_path / "src")
    cropped = five_crop_dataset(dataset, tmp_path / "crops")
    assert len(cropped) == 10 and cropped.class_names == dataset.class_names and cropped.num_classes == 11
    assert [s.id for s in cropped.samples] == [f"im{i}_c{c}" for i in range(2) for c in range(5)]
    for j in range(len(cropped.samples)):
        i, (top, left) = j // 5, CROPS[j % 5]
        item = cropped[j]
        np.testing.assert_array_equal(np.array(item["image"]), images[i][top : top + 4, left : left + 6])
        np.testing.assert_array_equal(item["mask"], masks[i][top : top + 4, left : left + 6])
    assert (cropped[0]["mask"] == 255).any()


def test_five_crop_is_written_once_and_resumes(tmp_path):
    dataset, _, _ = make_labelled_folder(tmp_path / "src")
    out = tmp_path / "crops"
    five_crop_dataset(dataset, out)
    before = mtimes(out / "images")
    assert len(five_crop_dataset(dataset, out)) == 10
    assert mtimes(out / "images") == before

    (out / "DONE").unlink()  # an interrupted run: one crop missing
    (out / "images" / "im1_c3.png").unlink()
    assert len(five_crop_dataset(dataset, out)) == 10
    after = mtimes(out / "images")
    assert {k for k in after if after[k] != before.get(k)} == {"im1_c3.png"}
    assert (out / "DONE").exists()
    with pytest.raises(CacheError, match="crop_ratio"):
        five_crop_dataset(dataset, out, crop_ratio=0.7)


def test_five_crop_names_a_corrupt_source_image(tmp_path):
    dataset, _, _ = make_labelled_folder(tmp_path / "src")
    (tmp_path / "src" / "imgs" / "im1.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="im1.png"):
        five_crop_dataset(dataset, tmp_path / "crops")
    assert not (tmp_path / "crops" / "DONE").exists()
    assert not any(name.startswith(".") for name in os.listdir(tmp_path / "crops" / "images"))


def test_five_crop_of_unlabelled_images(tmp_path, image_folder):

    dataset = create_dataset("folder", image_folder(tmp_path / "src", 3, size=(W, H)), "")
    cropped = five_crop_dataset(dataset, tmp_path / "crops")
    assert len(cropped) == 15 and not cropped.has_masks and cropped[4]["image"].size == (6, 4)
    assert not (tmp_path / "crops" / "masks").exists()
