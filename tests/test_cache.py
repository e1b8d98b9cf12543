"""Feature cache: reused when present, atomic (a crashed or killed run is never read as
complete), resumable shard by shard, corrupt images reported by name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from unseg.datasets import create_dataset
from unseg.errors import CacheError, ImageError
from unseg.features import FeatureCache, extract_features
from unseg.features.cache import cached_masks

SIZE = (32, 48)


class CountingBackbone:
    """Wraps a backbone's forward to count images and fail after ``fail_after`` batches."""

    def __init__(self, backbone, fail_after: int | None = None) -> None:
        self.backbone, self.fail_after, self.batches, self.images = backbone, fail_after, 0, 0
        self.inner = backbone.forward_with_saliency
        backbone.forward_with_saliency = self

    def __call__(self, x):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.batches += 1
        self.images += len(x)
        return self.inner(x)


def extract(backbone, dataset, root, **kw):
    return extract_features(
        backbone, dataset, SIZE, cache_root=root, batch_size=2, num_workers=0, shard_size=2, progress=False, **kw
    )


def test_cache_contents_match_the_backbone_and_are_reused(tmp_path, image_folder, tiny_vit):
    dataset = create_dataset("folder", image_folder(tmp_path / "imgs", 5), "")
    backbone = tiny_vit()
    counter = CountingBackbone(backbone)
    cache = extract(backbone, dataset, tmp_path / "cache")
    assert counter.images == 5 and len(cache) == 5 and cache.ids == [f"img{i:02d}" for i in range(5)]
    assert cache.dim == 384 and cache.grid == (2, 3)
    assert len(cache.meta) and cache.meta["num_shards"] == 3
    # the stored features are the backbone's output on the preprocessed image
    from unseg.features import image_to_tensor

    x = image_to_tensor(dataset[3]["image"], SIZE, backbone.mean, backbone.std)[None]
    with torch.no_grad():
        f, s = counter.inner(x)
    np.testing.assert_allclose(cache.features(3), f[0].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cache.saliency(3), s[0].numpy(), rtol=1e-5, atol=1e-6)
    tokens = np.concatenate(list(cache.iter_tokens(batch=2)))
    np.testing.assert_allclose(tokens[3 * 6 : 4 * 6], f[0].flatten(1).T.numpy(), rtol=1e-5, atol=1e-5)
    # second call: nothing recomputed
    again = extract(backbone, dataset, tmp_path / "cache")
    assert counter.images == 5 and again.root == cache.root
    # other weights: another cache folder
    other = extract(tiny_vit(seed=1), dataset, tmp_path / "cache")
    assert other.root != cache.root


def test_interrupted_extraction_is_not_complete_and_resumes(tmp_path, image_folder, tiny_vit):
    dataset = create_dataset("folder", image_folder(tmp_path / "imgs", 7), "")
    reference = extract(tiny_vit(), dataset, tmp_path / "ref")

    backbone = tiny_vit()
    counter = CountingBackbone(backbone, fail_after=2)  # dies in the third batch (= third shard)
    with pytest.raises(KeyboardInterrupt):
        extract(backbone, dataset, tmp_path / "cache")
    (folder,) = (tmp_path / "cache").iterdir()
    assert not (folder / "COMPLETE").exists()
    with pytest.raises(CacheError, match="incomplete"):
        FeatureCache(folder)
    assert sorted(p.name for p in folder.glob("shard-*.json")) == ["shard-00000.json", "shard-00001.json"]
    assert not list(folder.glob(".*tmp*"))  # no half-written file left behind

    counter.fail_after = None
    cache = extract(backbone, dataset, tmp_path / "cache")
    assert counter.images == 4 + 3  # 2 shards before the crash, then only the 2 missing shards (2 + 1 images)
    assert cache.ids == reference.ids
    for i in range(len(cache)):
        np.testing.assert_allclose(cache.features(i), reference.features(i), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_killed_process_leaves_a_resumable_cache(tmp_path, image_folder, tiny_vit):
    """SIGKILL in the middle of writing: the survivors are whole shards, and a rerun completes."""
    image_folder(tmp_path / "imgs", 12, size=(64, 48))
    script = textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {str(tmp_path)!r})
        from unseg.datasets import create_dataset
        from unseg.features import extract_features
        from unseg.backbones import create_backbone
        torch.manual_seed(0)
        b = create_backbone("dino_vits16", weights="random")
        inner = b.forward_with_saliency
        def slow(x):
            out = inner(x)
            print("batch", flush=True)
            time.sleep(0.3)
            return out
        b.forward_with_saliency = slow
        ds = create_dataset("folder", {str(tmp_path / "imgs")!r}, "")
        extract_features(b, ds, (32, 48), cache_root={str(tmp_path / "cache")!r}, batch_size=2,
                         num_workers=0, shard_size=4, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for _ in range(5):  # let it write two shards and start the third
        assert proc.stdout.readline().startswith("batch")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (folder,) = (tmp_path / "cache").iterdir()
    with pytest.raises(CacheError):
        FeatureCache(folder)
    done = sorted(folder.glob("shard-*.json"))
    assert 1 <= len(done) < 3
    for info in done:  # every shard marked done is whole and readable
        assert np.load(str(info).replace(".json", ".feats.npy")).shape == (4, 384, 2, 3)
    dataset = create_dataset("folder", tmp_path / "imgs", "")
    backbone = tiny_vit()
    counter = CountingBackbone(backbone)
    resumed = extract_features(
        backbone,
        dataset,
        (32, 48),
        cache_root=tmp_path / "cache",
        batch_size=2,
        num_workers=0,
        shard_size=4,
        progress=False,
    )
    assert resumed.root == folder and len(resumed) == 12
    assert counter.images == 12 - 4 * len(done)  # only the missing shards were computed
    from unseg.features import image_to_tensor

    x = image_to_tensor(dataset[11]["image"], (32, 48), backbone.mean, backbone.std)[None]
    with torch.no_grad():
        np.testing.assert_allclose(resumed.features(11), counter.inner(x)[0][0].numpy(), rtol=1e-5, atol=1e-5)


def test_corrupt_image_is_reported_and_cached_shards_survive(tmp_path, image_folder, tiny_vit):
    folder = image_folder(tmp_path / "imgs", 6)
    (folder / "img04.png").write_bytes(b"not a png at all")
    dataset = create_dataset("folder", folder, "")
    backbone = tiny_vit()
    with pytest.raises(ImageError, match="img04.png"):
        extract(backbone, dataset, tmp_path / "cache")
    (root,) = (tmp_path / "cache").iterdir()
    assert (root / "shard-00000.json").exists() and (root / "shard-00001.json").exists()
    cache = extract(backbone, dataset, tmp_path / "cache", skip_corrupt=True)
    assert cache.skipped == ["img04"] and "img04" not in cache.ids and len(cache) == 5


def test_cache_with_other_settings_in_same_folder_is_refused(tmp_path, image_folder, tiny_vit):
    dataset = create_dataset("folder", image_folder(tmp_path / "imgs", 2), "")
    cache = extract(tiny_vit(), dataset, tmp_path / "cache")
    meta = cache.root / "meta.json"
    meta.write_text(meta.read_text().replace('"dim": 384', '"dim": 12'))
    (cache.root / "COMPLETE").unlink()
    with pytest.raises(CacheError, match="other settings"):
        extract(tiny_vit(), dataset, tmp_path / "cache")


def test_cached_masks_follow_cache_order_and_size(tmp_path, image_folder, tiny_vit):
    from PIL import Image

    folder = image_folder(tmp_path / "imgs", 3, size=(8, 6))
    masks = tmp_path / "masks"
    masks.mkdir()
    expected = []
    for i in range(3):
        m = np.full((6, 8), i, np.uint8)
        m[:, 4:] = 255
        Image.fromarray(m).save(masks / f"img{i:02d}.png")
        expected.append(m)
    dataset = create_dataset("folder", folder, "", masks=masks, num_classes=3)
    cache = extract(tiny_vit(), dataset, tmp_path / "cache")
    got = cached_masks(cache, dataset, (3, 4))
    assert got.shape == (3, 3, 4)
    for i in range(3):
        assert (got[i][:, :2] == i).all() and (got[i][:, 2:] == 255).all()
    assert (cache.root / "masks-3x4.npy").exists()


def test_ranks_write_disjoint_shards_and_the_last_completes_the_cache(tmp_path, image_folder, tiny_vit):
    dataset = create_dataset("folder", image_folder(tmp_path / "imgs", 7), "")
    single = extract(tiny_vit(), dataset, tmp_path / "single")
    backbone = tiny_vit()
    counter = CountingBackbone(backbone)
    assert extract(backbone, dataset, tmp_path / "multi", rank=1, world_size=2) is None  # shards 1, 3
    assert counter.images == 2 + 1
    (root,) = (tmp_path / "multi").iterdir()
    assert sorted(p.name for p in root.glob("shard-*.json")) == ["shard-00001.json", "shard-00003.json"]
    cache = extract(backbone, dataset, tmp_path / "multi", rank=0, world_size=2)  # shards 0, 2: now complete
    assert counter.images == 7 and cache.ids == single.ids
    for i in range(7):
        np.testing.assert_allclose(cache.features(i), single.features(i), rtol=1e-5, atol=1e-5)
