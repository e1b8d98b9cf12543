"""Large photos (``unseg docs upsampling``): a sliding window stitches what the full forward gives a patch-local
network, multi-scale averages resized maps, both keep the weights' fingerprint but name their caches apart,
and bad settings are one line."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unseg.backbones import MultiScale, SlidingWindow, as_backbone, window_positions, with_views
from unseg.cli import main
from unseg.datasets import create_dataset
from unseg.errors import SettingError, WeightsError
from unseg.features import Source, extract_features, weights_fingerprint
from unseg.segment import segment
from unseg.unsupervised.fitted import FittedSegmenter


def patch_local(seed: int = 0):
    """Each stride-16 token depends only on its own 16x16 patch, as a window cannot tell it apart."""
    torch.manual_seed(seed)
    return as_backbone(nn.Conv2d(3, 8, 16, stride=16)).eval()


def image(batch: int = 2, height: int = 160, width: int = 160, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def one_line_error(argv: list, capsys) -> str:
    code = main([str(a) for a in argv])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("unseg: error:"), lines
    return lines[0]


# --- sliding window ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(160, 160), (160, 112)])
@torch.no_grad()
def test_sliding_window_of_a_patch_local_network_equals_its_full_forward(size):
    backbone = patch_local()
    x = image(2, *size)
    view = SlidingWindow(backbone, 64, 0.25, window_batch=4)  # 2 images x 3x3 (or 3x2) windows, 4 per pass
    assert [window_positions(n, 64, step) for n, step in zip(size, view.steps, strict=True)] == [
        {160: [0, 48, 96], 112: [0, 48]}[n] for n in size
    ]
    feats = view(x)
    full = backbone(x)
    assert feats.shape == full.shape == (2, 8, size[0] // 16, size[1] // 16)
    torch.testing.assert_close(feats, full, rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_a_window_the_size_of_the_input_is_the_backbone_unchanged(tiny_vit):
    for backbone, window in ((patch_local(), 64), (tiny_vit(), (48, 64))):
        x = image(2, *((window, window) if isinstance(window, int) else window))
        for got, want in zip(
            SlidingWindow(backbone, window).forward_with_saliency(x), backbone.forward_with_saliency(x), strict=True
        ):
            assert torch.equal(got, want)


def test_window_positions_cover_every_token_and_the_last_is_flush():
    for length in range(64, 400, 16):
        for step in (16, 32, 48, 64):
            starts = window_positions(length, 64, step)
            assert starts[0] == 0 and starts[-1] == length - 64  # flush with both borders
            assert all(s % 16 == 0 for s in starts) and starts == sorted(set(starts))
            assert all(0 < b - a <= step for a, b in pairwise(starts))
            covered = np.zeros(length, bool)
            for s in starts:
                covered[s : s + 64] = True
            assert covered.all()
    assert window_positions(64, 64, 48) == [0]
    # steps: the largest stride multiple keeping at least the overlap asked for, at least one token
    backbone = patch_local()
    assert SlidingWindow(backbone, 448, 0.25).steps == (336, 336)
    assert SlidingWindow(backbone, (64, 448), 0.3).steps == (32, 304)
    assert SlidingWindow(backbone, 64, 0.0).steps == (64, 64)
    assert SlidingWindow(backbone, 64, 0.99).steps == (16, 16)


# --- multi-scale -----------------------------------------------------------------------------------


@torch.no_grad()
def test_multi_scale_averages_the_resized_maps_and_scale_one_is_the_backbone():
    backbone = patch_local()
    x = image(2, 96, 64)
    for got, want in zip(
        MultiScale(backbone, [1]).forward_with_saliency(x), backbone.forward_with_saliency(x), strict=True
    ):
        assert torch.equal(got, want)
    feats, sal = MultiScale(backbone, (1, 2)).forward_with_saliency(x)
    conv = backbone.model
    big = conv(F.interpolate(x, size=(192, 128), mode="bilinear", align_corners=False))
    expected = (conv(x) + F.interpolate(big, size=(6, 4), mode="bilinear", align_corners=False)) / 2
    torch.testing.assert_close(feats, expected, rtol=1e-6, atol=1e-6)
    norms = (
        conv(x).norm(dim=1) / conv(x).norm(dim=1).sum((1, 2), keepdim=True)
        + F.interpolate(
            (big.norm(dim=1) / big.norm(dim=1).sum((1, 2), keepdim=True))[:, None],
            size=(6, 4),
            mode="bilinear",
            align_corners=False,
        )[:, 0]
    )
    torch.testing.assert_close(sal, norms / norms.sum((1, 2), keepdim=True), rtol=1e-5, atol=1e-7)
    # a scale rounds to whole tokens: 1.3 x (96, 64) -> (128, 80), back on the (6, 4) grid
    assert MultiScale(backbone, (1.3,)).forward_with_saliency(x)[0].shape == (2, 8, 6, 4)


@torch.no_grad()
def test_saliency_sums_to_one_per_image(tiny_vit):
    vit = tiny_vit()
    x = image(2, 96, 128)
    for view in (
        SlidingWindow(vit, 64, 0.5),
        MultiScale(vit, (0.5, 1, 1.5)),
        with_views(vit, window=(48, 64), scales=(1, 1.5), window_batch=3),
    ):
        feats, sal = view.forward_with_saliency(x)
        assert feats.shape == (2, 384, 6, 8) and sal.shape == (2, 6, 8)
        torch.testing.assert_close(sal.sum((1, 2)), torch.ones(2))
        assert (sal >= 0).all()


# --- identity: weights and caches -----------------------------------------------------------------


def test_cache_name_follows_the_settings_and_the_weights_fingerprint_does_not(tmp_path):
    backbone = patch_local()
    views = {
        "plain": backbone,
        "window": with_views(backbone, window=64),
        "overlap": with_views(backbone, window=64, window_overlap=0.5),
        "rectangle": with_views(backbone, window=(64, 48)),
        "scales": with_views(backbone, scales=(1, 1.5)),
        "both": with_views(backbone, window=64, scales=(1, 1.5)),
    }
    names = {k: v.cache_name for k, v in views.items()}
    assert names == {
        "plain": "module-Conv2d",
        "window": "module-Conv2d-win64o0.25",
        "overlap": "module-Conv2d-win64o0.5",
        "rectangle": "module-Conv2d-win64x48o0.25",
        "scales": "module-Conv2d-ms1+1.5",
        "both": "module-Conv2d-win64o0.25-ms1+1.5",
    }
    assert isinstance(views["both"], MultiScale) and isinstance(views["both"].inner, SlidingWindow)
    assert with_views(backbone, scales=[1.0]) is backbone
    assert {weights_fingerprint(v) for v in views.values()} == {weights_fingerprint(backbone)}
    for view in views.values():
        assert (view.stride, view.embed_dim, view.mean, view.std) == (16, 8, backbone.mean, backbone.std)
        assert view.model is backbone.model
    # loading weights into a view loads them into the wrapped network
    state = {k: torch.zeros_like(v) for k, v in backbone.weight_state_dict().items()}
    views["both"].load_weight_state_dict(state)
    assert not backbone.model.weight.any()


# --- bad settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, needles",
    [
        ({"window": 50}, ["window 50 px", "multiple of the backbone stride 16"]),
        ({"window": (64, 0)}, ["window 64x0", "at least 1 px"]),
        ({"window": 64, "window_overlap": 1.0}, ["window overlap 1.0", "[0, 1)"]),
        ({"window_overlap": -0.1}, ["window overlap -0.1", "[0, 1)"]),
        ({"scales": (1, 0)}, ["scale 0", "> 0"]),
        ({"scales": (-1.5,)}, ["scale -1.5", "> 0"]),
        ({"scales": ()}, ["scales are empty"]),
    ],
)
def test_bad_settings_are_setting_errors_naming_the_value(kwargs, needles):
    with pytest.raises(SettingError) as err:
        with_views(patch_local(), **kwargs)
    assert all(n in str(err.value) for n in needles), str(err.value)


def test_a_window_larger_than_the_input_fails_before_extraction(tmp_path, image_folder):
    view = SlidingWindow(patch_local(), 64)
    with pytest.raises(SettingError, match=r"window 64 px is larger than the input 48x96 px"):
        view.forward_with_saliency(image(1, 48, 96))
    message = "at scale 0.5 of the input 96 px: window 64 px is larger than the input 48 px"
    with pytest.raises(SettingError, match=message):
        with_views(patch_local(), window=64, scales=(0.5, 1)).check_input((96, 96))
    source = Source(
        nn.Conv2d(3, 8, 16, stride=16),
        dataset="folder",
        root=image_folder(tmp_path / "imgs", 2),
        input_size=48,
        window=64,
        cache_dir=tmp_path / "cache",
    )
    with pytest.raises(SettingError, match="window 64 px is larger than the input 48 px"):
        source.load_split("")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--window", "50"], ["window 50 px", "stride 16"]),
        (["--window", "64"], ["window 64 px is larger than the input 32 px"]),
        (["--window", "32", "--window-overlap", "1"], ["--window-overlap", "[0, 1)"]),  # refused as it is parsed
        (["--scales", "1", "0"], ["--scales", "> 0"]),
    ],
)
def test_bad_settings_are_one_line_on_the_command_line(tmp_path, capsys, image_folder, argv, needles):
    images = image_folder(tmp_path / "imgs", 2)
    common = ["--input-size", "32", "--workers", "0", *argv]
    line = one_line_error(
        [
            "eval",
            "cluster",
            "--dataset",
            "folder",
            "--root",
            images,
            "--split",
            "",
            "--k",
            "2",
            "--cache-dir",
            tmp_path / "cache",
            *common,
        ],
        capsys,
    )
    assert all(n in line for n in needles), line
    line = one_line_error(["segment", images, "--out", tmp_path / "out", *common], capsys)
    assert all(n in line for n in needles), line


# --- wiring ------------------------------------------------------------------------------------------


def test_source_extracts_through_the_views_into_their_own_cache(tmp_path, image_folder):
    root = image_folder(tmp_path / "imgs", 3, size=(70, 50))
    net = nn.Conv2d(3, 8, 16, stride=16)
    options = {
        "dataset": "folder",
        "root": root,
        "input_size": (64, 96),
        "cache_dir": tmp_path / "cache",
        "num_workers": 0,
        "batch_size": 2,
        "progress": False,
    }
    plain = Source(net, **options)
    tiled = Source(net, window=(32, 48), window_overlap=0.5, scales=(1, 0.5), **options)
    assert tiled.describe() == {
        **plain.describe(),
        "backbone": "module-Conv2d-win32x48o0.5-ms1+0.5",
        "window": [32, 48],
        "window_overlap": 0.5,
        "scales": [1, 0.5],
    }
    a, b = plain.load_split("").cache, tiled.load_split("").cache
    assert a.root != b.root and b.meta["backbone"] == "module-Conv2d-win32x48o0.5-ms1+0.5"
    assert a.meta["weights"] == b.meta["weights"] and b.grid == a.grid == (4, 6)
    dataset = create_dataset("folder", root, "")
    again = extract_features(
        tiled.build_backbone(), dataset, (64, 96), cache_root=tmp_path / "cache", num_workers=0, progress=False
    )
    assert again.root == b.root
    assert not np.allclose(a.features(0), b.features(0))  # scale 0.5 changed them


def test_segment_and_extract_on_the_command_line_with_a_window(tmp_path, capsys, image_folder):
    images = image_folder(tmp_path / "imgs", 3, size=(150, 100))
    out, saved = tmp_path / "out", tmp_path / "km.npz"
    assert (
        main(
            [
                "segment",
                str(images),
                "--method",
                "kmeans",
                "--out",
                str(out),
                "--k",
                "3",
                "--input-size",
                "128",
                "--window",
                "64",
                "--window-overlap",
                "0.5",
                "--workers",
                "0",
                "--upsample",
                "none",
                "--save-clustering",
                str(saved),
            ]
        )
        == 0
    )
    assert "backbone view win64o0.5" in capsys.readouterr().out
    assert len(list((out / "labels").glob("*.png"))) == 3
    assert FittedSegmenter.load(saved).settings["views"] == {"window": [64, 64], "window_overlap": 0.5, "scales": [1.0]}
    # the clustering's views are the default (and the summary names them); others are refused
    assert (
        main(
            [
                "segment",
                str(images),
                "--out",
                str(tmp_path / "again"),
                "--clustering",
                str(saved),
                "--workers",
                "0",
                "--upsample",
                "none",
            ]
        )
        == 0
    )
    assert "backbone view win64o0.5" in capsys.readouterr().out
    first = segment(images, clustering=saved, num_workers=0)  # the file's method
    assert first.method == "kmeans" and [r.labels.shape for r in first.results] == [(100, 150)] * 3
    with pytest.raises(WeightsError, match=r"win64o0.5; this run uses win64o0.25"):
        segment(images, clustering=saved, window_overlap=0.25, num_workers=0)
    with pytest.raises(WeightsError, match=r"win64o0.5; this run uses win64o0.5-ms1\+2"):
        segment(images, clustering=saved, scales=(1, 2), num_workers=0)

    assert (
        main(
            [
                "extract",
                "--dataset",
                "folder",
                "--root",
                str(images),
                "--split",
                "",
                "--input-size",
                "128",
                "--window",
                "64",
                "--scales",
                "1",
                "1.5",
                "--cache-dir",
                str(tmp_path / "cache"),
                "--workers",
                "0",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "features 432x8x8" in printed and "EfficientNetLite0-win64o0.25-ms1+1.5" in printed
