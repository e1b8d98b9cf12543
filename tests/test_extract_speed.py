"""The faster extraction path (images decoded one by one in low-priority workers, batched per
shard in the main process, shards written in the background) stores exactly what a direct
forward gives; a bf16 forward gets its own cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unseg.datasets import create_dataset
from unseg.errors import SettingError
from unseg.features import extract_features, image_to_tensor

SIZE = (32, 48)


def direct_forward(backbone, dataset, batches: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The backbone run by hand on the preprocessed images, in the given batches."""
    feats, sals = [], []
    with torch.no_grad():
        for batch in batches:
            x = torch.stack([image_to_tensor(dataset[i]["image"], SIZE, backbone.mean, backbone.std) for i in batch])
            f, s = backbone.forward_with_saliency(x)
            feats.append(f.numpy())
            sals.append(s.numpy())
    return np.concatenate(feats), np.concatenate(sals)


@pytest.mark.parametrize("workers", [0, 2])
def test_fp32_cache_is_bit_identical_to_a_direct_forward(tmp_path, image_folder, tiny_vit, workers):
    dataset = create_dataset("folder", image_folder(tmp_path / "imgs", 7), "")
    backbone = tiny_vit()
    cache = extract_features(
        backbone,
        dataset,
        SIZE,
        cache_root=tmp_path / "cache",
        batch_size=3,
        shard_size=4,
        num_workers=workers,
        progress=False,
    )
    # batches never cross a shard: shard 0 = [0, 1, 2] + [3], shard 1 = [4, 5, 6]
    feats, sals = direct_forward(backbone, dataset, [[0, 1, 2], [3], [4, 5, 6]])
    assert cache.ids == [f"img{i:02d}" for i in range(7)] and cache.meta["num_shards"] == 2
    np.testing.assert_array_equal(np.stack([cache.features(i) for i in range(7)]), feats)
    np.testing.assert_array_equal(np.stack([cache.saliency(i) for i in range(7)]), sals)

    half = extract_features(
        backbone,
        dataset,
        SIZE,
        cache_root=tmp_path / "half",
        batch_size=3,
        shard_size=4,
        num_workers=workers,
        dtype="float16",
        progress=False,
    )
    assert half.root.name == cache.root.name  # storage dtype is not part of the key
    np.testing.assert_array_equal(np.stack([half.features(i) for i in range(7)]), feats.astype(np.float16))


def test_skipped_images_leave_the_others_as_a_direct_forward(tmp_path, image_folder, tiny_vit):
    folder = image_folder(tmp_path / "imgs", 5)
    (folder / "img02.png").write_bytes(b"not a png")
    dataset = create_dataset("folder", folder, "")
    backbone = tiny_vit()
    cache = extract_features(
        backbone,
        dataset,
        SIZE,
        cache_root=tmp_path / "cache",
        batch_size=2,
        shard_size=4,
        num_workers=2,
        skip_corrupt=True,
        progress=False,
    )
    assert cache.ids == ["img00", "img01", "img03", "img04"] and cache.skipped == ["img02"]
    feats, _ = direct_forward(backbone, dataset, [[0, 1], [3], [4]])
    np.testing.assert_array_equal(np.stack([cache.features(i) for i in range(4)]), feats)


def test_bf16_gets_its_own_cache_and_fp32_keeps_the_old_one(tmp_path, image_folder, tiny_vit):
    dataset = create_dataset("folder", image_folder(tmp_path / "imgs", 3), "")
    backbone = tiny_vit()
    options = dict(cache_root=tmp_path / "cache", batch_size=3, num_workers=0, progress=False)
    fp32 = extract_features(backbone, dataset, SIZE, **options)
    bf16 = extract_features(backbone, dataset, SIZE, precision="bf16", **options)
    assert bf16.root != fp32.root
    assert bf16.meta["precision"] == "bf16" and "precision" not in fp32.meta  # fp32 caches made before still answer
    a = np.stack([fp32.features(i) for i in range(3)])
    b = np.stack([bf16.features(i) for i in range(3)])
    assert not np.array_equal(a, b)  # the forward really ran in bfloat16 ...
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99  # ... and still computed the same features
    # each precision finds its own cache again
    assert extract_features(backbone, dataset, SIZE, precision="bf16", **options).root == bf16.root
    assert extract_features(backbone, dataset, SIZE, precision="fp32", **options).root == fp32.root


@pytest.mark.parametrize("precision, message", [("fp16", "needs a CUDA device"), ("tf32", "is not one of")])
def test_unsupported_precision_is_refused(tmp_path, image_folder, tiny_vit, precision, message):
    dataset = create_dataset("folder", image_folder(tmp_path / "imgs", 1), "")
    with pytest.raises(SettingError, match=message):
        extract_features(
            tiny_vit(), dataset, SIZE, cache_root=tmp_path / "cache", device="cpu", precision=precision, progress=False
        )
