"""Feature upsampling: the guided filter against its definition, the guided upsampler keeps an image edge
that bilinear blurs; shapes; row blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unseg.errors import SettingError
from unseg.features import guided_filter as gf
from unseg.features.guided_filter import box_mean, fast_guided_filter, guided_filter
from unseg.features.upsample import Upsampling, bilinear_upsample, guide_tensor, guided_upsample, upsample_features


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
    guided = guided_upsample(feats, guide, radius=1, eps=1e-3)
    bilinear = bilinear_upsample(feats, size)
    assert guided.shape == bilinear.shape == (3, *size)
    # each pixel, even next to the edge, is nearer its own side's value: labels read off it follow the edge
    err_guided = (guided[0] - truth[0]).abs()
    err_bilinear = (bilinear[0] - truth[0]).abs()
    assert err_guided.max() < 0.25
    assert torch.equal(guided[:2].argmax(0), 1 - truth[0].long())
    assert not torch.equal(bilinear[:2].argmax(0), 1 - truth[0].long())  # bilinear puts the boundary off the edge
    near = slice(29 - 4, 29 + 4)  # the columns around the edge: bilinear mixes the two sides there
    assert err_bilinear[:, near].max() > 0.5 and err_guided[:, near].mean() < err_bilinear[:, near].mean() / 2
    # linear with weights summing to one: a constant channel stays constant, channels 0 + 1 still sum to 1
    torch.testing.assert_close(guided[2], feats[2, 0, 0].expand(size), rtol=0, atol=1e-5)
    torch.testing.assert_close(guided[0] + guided[1], torch.ones(size), rtol=0, atol=1e-5)


def direct_guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter written out pixel by pixel from its definition: per window, a ridge
    regression of ``src`` on the guide's colours; per pixel, the mean of its windows' fits."""
    _, H, W = guide.shape
    windows = [
        [(slice(max(0, y - r), min(H, y + r + 1)), slice(max(0, x - r), min(W, x + r + 1))) for x in range(W)]
        for y in range(H)
    ]
    a = np.zeros((len(src), 3, H, W))
    b = np.zeros((len(src), H, W))
    for y in range(H):
        for x in range(W):
            sy, sx = windows[y][x]
            colours = guide[:, sy, sx].reshape(3, -1)
            mean, cov = colours.mean(1), np.cov(colours, bias=True)
            for c in range(len(src)):
                values = src[c, sy, sx].reshape(-1)
                cross = (colours * values).mean(1) - mean * values.mean()
                a[c, :, y, x] = np.linalg.solve(cov + eps * np.eye(3), cross)
                b[c, y, x] = values.mean() - a[c, :, y, x] @ mean
    out = np.zeros((len(src), H, W))
    for y in range(H):
        for x in range(W):
            sy, sx = windows[y][x]
            for c in range(len(src)):
                out[c, y, x] = a[c][:, sy, sx].reshape(3, -1).mean(1) @ guide[:, y, x] + b[c, sy, sx].mean()
    return out


@pytest.mark.parametrize("r, eps", [(1, 1e-3), (2, 1e-2), (4, 0.1)])
def test_guided_filter_equals_its_direct_computation(r, eps):
    rng = np.random.default_rng(r)
    guide, src = rng.random((3, 7, 9)), rng.random((2, 7, 9))
    got = guided_filter(torch.from_numpy(guide), torch.from_numpy(src), r, eps).numpy()
    np.testing.assert_allclose(got, direct_guided_filter(guide, src, r, eps), rtol=0, atol=1e-5)


def test_box_mean_is_the_window_mean_for_any_radius():
    x = torch.rand(2, 5, 11, 13, dtype=torch.float64)
    for r in (1, 3, 20):  # a window larger than the image is its whole clipped extent
        pad = (
            F.avg_pool2d(x, 2 * r + 1, stride=1, padding=min(r, (2 * r + 1) // 2), count_include_pad=False)
            if r <= 5
            else x.mean((-2, -1), keepdim=True).expand_as(x)
        )
        torch.testing.assert_close(box_mean(x, r), pad)


def test_fast_filter_is_exact_at_full_resolution_and_applies_its_coefficients_bilinearly():
    torch.manual_seed(2)
    guide, src = torch.rand(2, 3, 30, 41), torch.rand(2, 4, 30, 41)
    exact = guided_filter(guide, src, 3, 1e-3)
    # the fast path fitted on the full grid is the exact filter, whatever its row blocks
    torch.testing.assert_close(fast_guided_filter(guide, src, 3, 1e-3, chunk_rows=7), exact, rtol=0, atol=1e-6)
    assert torch.equal(fast_guided_filter(guide, src, 3, 1e-3, argmax=True), exact.argmax(1))
    # on a coarse grid: a and b fitted there, upsampled as F.interpolate would, applied to the full guide
    low = F.interpolate(src, size=(10, 14), mode="bilinear", align_corners=False, antialias=True)
    low_guide = F.interpolate(guide, size=(10, 14), mode="bilinear", align_corners=False, antialias=True)
    a, b = gf._coefficients(low_guide, low, 1, 1e-3)
    a = F.interpolate(a.flatten(1, 2), size=(30, 41), mode="bilinear", align_corners=False).reshape(2, 4, 3, 30, 41)
    b = F.interpolate(b, size=(30, 41), mode="bilinear", align_corners=False)
    expected = (a * guide[:, None]).sum(2) + b
    torch.testing.assert_close(fast_guided_filter(guide, low, 1, 1e-3, chunk_rows=8), expected, rtol=0, atol=1e-5)


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
    torch.testing.assert_close(
        upsample_codes(code, (8, 12)), F.interpolate(code, size=(8, 12), mode="bilinear", align_corners=False)
    )
    guides = [torch.rand(3, 8, 12), torch.zeros(3, 8, 12)]
    out = upsample_codes(code, (8, 12), Upsampling("guided"), iter(guides))
    for c, g, o in zip(code, guides, out, strict=True):  # each image by its own guide, in order
        torch.testing.assert_close(o, guided_upsample(c, g))


def test_segment_with_guided_upsampling(tmp_path):
    import shutil

    from unseg.demo import sample_root
    from unseg.segment import segment

    for name in ("0016E5_07959.png", "0016E5_07969.png"):
        shutil.copy(sample_root() / "val" / name, tmp_path / name)
    fast = {"method": "kmeans", "k": 4, "input_size": 224, "num_workers": 0, "niter": 10, "nredo": 1}
    coarse = [r.labels for r in segment([tmp_path], **fast, upsample=Upsampling()).results]
    guided = [r.labels for r in segment([tmp_path], **fast, upsample=Upsampling("guided", factor=4)).results]
    assert [g.shape for g in guided] == [c.shape for c in coarse] == [(360, 480)] * 2
    # the same clustering, read per pixel of a 4x finer grid: mostly the same segments, finer borders
    agree = np.mean([(g == c).mean() for g, c in zip(guided, coarse, strict=True)])
    assert 0.6 < agree < 1.0
