"""Feature upsampling: the guided upsampler keeps an image edge that bilinear blurs; shapes; row blocks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unseg.errors import SettingError
from unseg.features import upsample as up
from unseg.features.upsample import Upsampling, bilinear_upsample, guided_upsample, guide_tensor, upsample_features


def edge_scene(h: int = 8, w: int = 8, factor: int = 8, edge: int = 29):
    """A guide with a sharp vertical edge at column ``edge`` (dark left, bright right) and low-res
    features that are 0 left / 1 right of it, blurred by the coarse grid (mixed in the edge cells)."""
    H, W = h * factor, w * factor
    guide = torch.zeros(3, H, W)
    guide[:, :, edge:] = 1.0
    truth = torch.zeros(1, H, W)
    truth[:, :, edge:] = 1.0
    low = F.adaptive_avg_pool2d(truth[None], (h, w))[0]  # what a coarse backbone grid sees: blurred at the edge
    feats = torch.cat([low, 1 - low, torch.randn(1, 1, 1).expand(1, h, w)])  # + a constant channel
    return feats, guide, truth


def test_guided_keeps_the_edge_bilinear_blurs_it():
    feats, guide, truth = edge_scene()
    size = guide.shape[-2:]
    guided = guided_upsample(feats, guide, radius=2, sigma_spatial=1.0, sigma_range=0.1)
    bilinear = bilinear_upsample(feats, size)
    assert guided.shape == bilinear.shape == (3, *size)
    # each side follows its own side's value, even the pixels right next to the edge
    err_guided = (guided[0] - truth[0]).abs()
    err_bilinear = (bilinear[0] - truth[0]).abs()
    assert err_guided.max() < 0.05
    near = slice(29 - 4, 29 + 4)  # the columns around the edge: bilinear mixes the two sides there
    assert err_bilinear[:, near].max() > 0.3
    assert err_guided[:, near].mean() < err_bilinear[:, near].mean() / 10
    # weights sum to one: a constant channel stays constant, and channels 0 + 1 still sum to 1
    torch.testing.assert_close(guided[2], feats[2, 0, 0].expand(size), rtol=0, atol=1e-5)
    torch.testing.assert_close(guided[0] + guided[1], torch.ones(size), rtol=0, atol=1e-5)


def test_guided_with_flat_guide_is_a_spatial_gaussian_filter():
    """Without colour differences the weights are the spatial Gaussian alone: a plain re-computation."""
    torch.manual_seed(0)
    feats = torch.randn(4, 5, 6)
    H, W, r, s = 15, 18, 1, 0.8
    out = guided_upsample(feats, torch.full((3, H, W), 0.5), radius=r, sigma_spatial=s, sigma_range=0.1)
    expected = torch.zeros(4, H, W)
    for y in range(H):
        for x in range(W):
            u, v = (y + 0.5) * 5 / H - 0.5, (x + 0.5) * 6 / W - 0.5
            cy, cx = round(u), round(v)
            num, den = torch.zeros(4), 0.0
            for qy in range(cy - r, cy + r + 1):
                for qx in range(cx - r, cx + r + 1):
                    if 0 <= qy < 5 and 0 <= qx < 6:
                        wgt = float(np.exp(-((qy - u) ** 2 + (qx - v) ** 2) / (2 * s * s)))
                        num += wgt * feats[:, qy, qx]
                        den += wgt
            expected[:, y, x] = num / den
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_row_blocks_bound_memory_and_do_not_change_the_result(monkeypatch):
    torch.manual_seed(1)
    D, h, w, H, W = 16, 12, 20, 300, 500
    feats, guide = torch.randn(D, h, w), torch.rand(3, H, W)
    whole = guided_upsample(feats, guide, chunk_rows=None)
    blocks = []
    real = up._guided_block

    def record(*args, **kwargs):
        out = real(*args, **kwargs)
        blocks.append(tuple(out.shape))
        return out

    monkeypatch.setattr(up, "_guided_block", record)
    chunked = guided_upsample(feats, guide, chunk_rows=32)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
    # every block holds at most 32 output rows: nothing of size H*W*window*D is ever built
    assert all(b[0] == D and b[1] <= 32 and b[2] == W for b in blocks)
    assert sum(b[1] for b in blocks) == H and len(blocks) == -(-H // 32)


def test_dispatch_shapes_and_errors():
    feats = torch.randn(5, 4, 6)
    for method in ("none", "bilinear"):
        assert upsample_features(feats, (9, 13), method).shape == (5, 9, 13)
    guide = guide_tensor(np.zeros((30, 40, 3), np.uint8), (9, 13))
    assert guide.shape == (3, 9, 13) and guide.dtype == torch.float32
    assert Upsampling("guided").apply(feats, (9, 13), guide).shape == (5, 9, 13)
    with pytest.raises(SettingError, match="needs the image"):
        upsample_features(feats, (9, 13), "guided")
    with pytest.raises(SettingError, match="not the target size"):
        upsample_features(feats, (10, 13), "guided", guide)
    with pytest.raises(SettingError, match="'cubic' is not one of none, bilinear, guided"):
        Upsampling("cubic")
    assert Upsampling("bilinear", factor=4).target((28, 30), (100, 100)) == (112, 120)
    assert Upsampling("bilinear", size=(64, 80)).target((28, 30), (100, 100)) == (64, 80)
    assert Upsampling("bilinear").target((28, 30), (100, 100)) == (100, 100)


def edge_cache(root, n: int = 6, grid: int = 4, size: int = 32):
    """A cache of images split by a vertical edge at a column off the token grid: features blurred
    on the coarse grid, masks (class 0 | class 1) and guides (dark | bright) at full size."""
    from unseg.features import FeatureCache
    from unseg.features.cache import mark_complete, prepare_cache_dir, write_shard

    rng = np.random.default_rng(0)
    masks = np.zeros((n, size, size), np.uint8)
    for i, edge in enumerate(rng.integers(5, size - 5, n)):
        masks[i, :, edge:] = 1
    truth = torch.from_numpy(masks).float()[:, None]
    low = F.adaptive_avg_pool2d(truth, (grid, grid))
    feats = torch.cat([low, 1 - low, 0.01 * torch.randn(n, 2, grid, grid)], 1).numpy()
    prepare_cache_dir(root, {"num_shards": 1, "dim": 4, "grid": [grid, grid], "input_size": [size, size]})
    write_shard(root, 0, feats, np.zeros((n, grid, grid), np.float32), [f"img{i}" for i in range(n)], [])
    assert mark_complete(root, 1)
    guides = [truth[i].expand(3, size, size).clone() for i in range(n)]
    return FeatureCache(root), masks, guides


def test_clustering_protocol_on_upsampled_features(tmp_path):
    from unseg.evaluation.clustering import evaluate_clustering

    cache, masks, guides = edge_cache(tmp_path)
    run = dict(ks=[2], seeds=[0], pca_dim=None, niter=20, nredo=1)
    (coarse,) = evaluate_clustering(cache, masks, 2, **run)
    (guided,) = evaluate_clustering(cache, masks, 2, **run, upsample=Upsampling("guided"), guides=iter(guides))
    (bilinear,) = evaluate_clustering(cache, masks, 2, **run, upsample=Upsampling("bilinear"))
    # the same centroids, assigned pixel by pixel: guided follows the edge, token blocks cannot
    assert guided.miou[0] > 97 and coarse.miou[0] < guided.miou[0] - 5
    assert guided.labels.shape == (6, 32, 32) and guided.settings["upsample"] == "guided"
    assert guided.settings["label_size"] == [32, 32] and coarse.labels.shape == (6, 4, 4)
    assert bilinear.miou[0] >= coarse.miou[0]
    # bilinear at the token grid's own size is the identity: exactly today's protocol
    (same,) = evaluate_clustering(cache, masks, 2, **run, upsample=Upsampling("bilinear", factor=1))
    assert same.miou == coarse.miou and same.iou == coarse.iou
    with pytest.raises(SettingError, match="needs the images as guides"):
        evaluate_clustering(cache, masks, 2, **run, upsample=Upsampling("guided"))


def test_stego_codes_upsampling():
    from unseg.methods.stego.evaluate import upsample_codes

    torch.manual_seed(0)
    code = torch.randn(2, 5, 4, 6)
    torch.testing.assert_close(upsample_codes(code, (8, 12)),
                               F.interpolate(code, size=(8, 12), mode="bilinear", align_corners=False))
    guides = [torch.rand(3, 8, 12), torch.zeros(3, 8, 12)]
    out = upsample_codes(code, (8, 12), Upsampling("guided"), iter(guides))
    for c, g, o in zip(code, guides, out):  # each image by its own guide, in order
        torch.testing.assert_close(o, guided_upsample(c, g))


def test_segment_with_guided_upsampling(tmp_path):
    import shutil

    from unseg.demo import sample_root
    from unseg.segment import segment

    for name in ("0016E5_07959.png", "0016E5_07969.png"):
        shutil.copy(sample_root() / "val" / name, tmp_path / name)
    fast = {"k": 4, "input_size": 224, "num_workers": 0, "niter": 10, "nredo": 1}
    coarse = segment([tmp_path], **fast)
    guided = segment([tmp_path], **fast, upsample=Upsampling("guided", factor=4))
    assert [g.shape for g in guided] == [c.shape for c in coarse] == [(360, 480)] * 2
    # the same clustering, read per pixel of a 4x finer grid: mostly the same segments, finer borders
    agree = np.mean([(g == c).mean() for g, c in zip(guided, coarse)])
    assert 0.6 < agree < 1.0
