"""``segment`` on users' images: outputs, a gallery whose links resolve, saved clusterings, bad input."""

import importlib.util
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unseg.demo import sample_root
from unseg.errors import ImageError, LayoutError, SettingError, WeightsError
from unseg.features import BackboneSettings
from unseg.segment import SegmentOptions, segment
from unseg.unsupervised.fitted import CDSettings, FittedSegmenter

HAS_CRF = importlib.util.find_spec("pydensecrf") is not None
FAST = {"input_size": 224, "num_workers": 0, "niter": 20, "nredo": 1}
KMEANS = {"method": "kmeans", **FAST}
SAMPLE = ["0016E5_07959.png", "0016E5_07969.png", "0016E5_07979.png"]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Three sample images; the third resized to another size and aspect ratio."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in SAMPLE[:2]:
        shutil.copy(sample_root() / "val" / name, folder / name)
    Image.open(sample_root() / "val" / SAMPLE[2]).resize((200, 290)).save(folder / "odd size.png")
    return folder


def test_segment_writes_labels_segments_foreground_and_a_gallery(photos, tmp_path, resolved_links):
    out = tmp_path / "out"
    run = segment([photos], out_dir=out, keep=True, **FAST)  # the default method: spectral
    assert run.method == "spectral"
    sizes = [(360, 480), (360, 480), (290, 200)]  # (H, W) of each image, in name order
    assert [r.segments.shape for r in run.results] == [r.labels.shape for r in run.results] == sizes
    names = ["0016E5_07959", "0016E5_07969", "odd size"]
    for folder in ("labels", "segments", "foreground"):
        assert sorted(p.stem for p in (out / folder).glob("*.png")) == names
    for name, result in zip(names, run.results, strict=True):
        m = len(result.groups)
        assert result.segments.max() < m and result.groups.max() < run.num_groups and len(result.background) == m
        # palette PNGs hold the ids themselves; the foreground PNG is 255 on foreground pixels
        np.testing.assert_array_equal(np.array(Image.open(out / "labels" / f"{name}.png")), result.labels)
        np.testing.assert_array_equal(np.array(Image.open(out / "segments" / f"{name}.png")), result.segments)
        np.testing.assert_array_equal(
            np.array(Image.open(out / "foreground" / f"{name}.png")) == 255, result.foreground
        )
        assert Image.open(out / "labels" / f"{name}.png").mode == "P"
        assert Image.open(out / "panels" / f"{name}.jpg").size[1] == 220  # the page's four views
    links = resolved_links(out / "index.html")
    assert sum("panels/" in link for link in links) == 6 and sum("labels/" in link for link in links) == 3
    assert sum("segments/" in link for link in links) == sum("foreground/" in link for link in links) == 3
    assert run.gallery == out / "index.html" and "segments per image" in run.describe()
    # without keep, a run that writes its pictures holds no maps in memory
    assert segment([photos], out_dir=tmp_path / "again", **FAST).results == []


def test_rerun_into_the_same_folder_keeps_only_this_runs_images(photos, tmp_path):
    out = tmp_path / "out"
    segment([photos], out_dir=out, **FAST)
    (out / "notes.txt").write_text("mine")
    segment([photos / SAMPLE[0]], out_dir=out, **FAST)
    for folder in ("labels", "segments", "foreground", "panels"):
        assert [p.stem for p in (out / folder).iterdir()] == [Path(SAMPLE[0]).stem]
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(not HAS_CRF, reason="pydensecrf is not installed")
def test_crf_refines_kmeans_on_decoded_photos(photos):
    """segment's CRF path end to end (photos decoded by PIL): labels change only where the CRF moves them,
    and stay the clusters' ids."""
    plain = segment(photos, k=4, **KMEANS).results
    refined = segment(photos, k=4, crf=True, **KMEANS).results
    for a, b in zip(plain, refined, strict=True):
        assert a.labels.shape == b.labels.shape and b.labels.max() < 4
        assert 0 < (a.labels != b.labels).mean() < 0.5  # the CRF moved some boundaries, not the whole picture


def test_spectral_refuses_the_options_of_the_clustering_methods(photos, tmp_path):
    for option in (
        {"crf": True},
        {"save_clustering": tmp_path / "x.npz"},
        {"checkpoint": tmp_path / "x.ckpt", "method": "spectral"},
    ):  # a checkpoint alone means stego
        with pytest.raises(SettingError, match="not to spectral"):
            segment(photos, **option, **FAST)
    with pytest.raises(SettingError, match="vocabulary size"):
        segment(photos, groups=3, **KMEANS)


def test_a_saved_clustering_gives_the_same_labels_on_new_images(photos, tmp_path):
    saved = tmp_path / "km.npz"
    first = [r.labels for r in segment(photos, k=5, save_clustering=saved, **KMEANS).results]
    new = tmp_path / "new"
    new.mkdir()
    shutil.copy(photos / SAMPLE[1], new / "again.png")
    again = segment([new / "again.png"], method="kmeans", clustering=saved, num_workers=0)  # input size: the file's
    np.testing.assert_array_equal(again.results[0].labels, first[1])
    assert all(lab.max() < 5 for lab in first) and first[0].shape == (360, 480)
    fitted = FittedSegmenter.load(saved)
    assert (fitted.method, fitted.backbone, fitted.input_size, fitted.num_labels) == (
        "kmeans",
        "efficientnet_lite0",
        (224, 224),
        5,
    )

    cd_file = tmp_path / "cd.npz"
    cd = segment(
        photos,
        k=4,
        cd=CDSettings(k=20, fg_threshold=0.5, fg_k=30),
        save_clustering=cd_file,
        **{**KMEANS, "method": "cd"},
    ).results
    np.testing.assert_array_equal(
        segment(new, method="cd", clustering=cd_file, num_workers=0).results[0].labels, cd[1].labels
    )


def test_the_models_input_size_applies_and_a_clustering_then_sets_the_default(photos, tmp_path):
    saved = tmp_path / "km.npz"
    options = SegmentOptions(model=BackboneSettings(input_size=160, num_workers=0), method="kmeans", k=3, nredo=1)
    segment(photos, options, save_clustering=saved)
    assert FittedSegmenter.load(saved).input_size == (160, 160)
    # no input size given: the clustering's (the usual default, larger, would be refused below)
    assert len(segment(photos, clustering=saved, num_workers=0).results) == 3
    with pytest.raises(WeightsError, match=r"at input 160x160; this run uses .* at input 192x192"):
        segment(photos, clustering=saved, input_size=192, num_workers=0)


def test_flat_changes_go_to_the_options_or_their_model(photos):
    run = segment(photos, backbone="efficientnet_lite0_stage5", groups=3, **FAST)
    assert (run.backbone, run.num_groups, run.method) == ("efficientnet_lite0_stage5", 3, "spectral")
    with pytest.raises(SettingError, match=r"more than the 48 feature tokens .* at input size 64x64"):
        segment(photos, method="kmeans", k=49, input_size=64, num_workers=0)  # 3 images of 4x4 tokens


def test_a_clustering_from_another_backbone_or_weights_is_refused(photos, tmp_path):
    saved = tmp_path / "km.npz"
    segment(photos, k=3, save_clustering=saved, **KMEANS)
    with pytest.raises(WeightsError, match=r"efficientnet_lite0.*dino_vits16"):
        segment(photos, method="kmeans", backbone="dino_vits16", weights="random", clustering=saved, num_workers=0)
    fingerprint = FittedSegmenter.load(saved).weights
    with pytest.raises(WeightsError, match=fingerprint) as err:
        segment(photos, method="kmeans", weights="random", clustering=saved, num_workers=0)
    assert str(err.value).count("efficientnet_lite0") == 2
    with pytest.raises(WeightsError, match="not a clustering"):
        (tmp_path / "junk.npz").write_text("hello")
        segment(photos, method="kmeans", clustering=tmp_path / "junk.npz", num_workers=0)


def test_unreadable_or_non_image_files_are_named_or_skipped(photos, caplog):
    (photos / "notes.png").write_text("not a picture")
    with pytest.raises(ImageError, match="notes.png"):
        segment(photos, **FAST)
    (photos / "notes.png").rename(photos / "notes.txt")
    with pytest.raises(ImageError, match="notes.txt"):
        segment(photos, **FAST)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with caplog.at_level(logging.WARNING):
        run = segment(photos, skip_invalid=True, **FAST)
    assert len(run.results) == 3 and "notes.txt" in caplog.text and "broken.jpg" in caplog.text


def test_an_empty_folder_or_one_without_images_is_an_error(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="holds no images"):
        segment(tmp_path / "empty")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hi")
    with caplog.at_level(logging.WARNING), pytest.raises(LayoutError, match="docs holds no images"):
        segment(tmp_path / "docs", skip_invalid=True)
    assert "readme.txt" in caplog.text
    with pytest.raises(LayoutError, match="does not exist"):
        segment(tmp_path / "missing.png")


def test_stego_segments_with_its_cluster_probe(photos, tmp_path, resolved_links):
    ckpt = _stego_checkpoint(tmp_path / "stego.ckpt")
    labels = [
        r.labels
        for r in segment(photos, method="stego", checkpoint=ckpt, out_dir=tmp_path / "s", keep=True, **FAST).results
    ]
    assert [lab.shape for lab in labels] == [(360, 480), (360, 480), (290, 200)]
    assert max(lab.max() for lab in labels) < 6 and len(np.unique(np.concatenate([lab.ravel() for lab in labels]))) > 1
    resolved_links(tmp_path / "s" / "index.html")
    with pytest.raises(SettingError, match="checkpoint"):
        segment(photos, method="stego")


def test_written_image_counts_the_segments_and_groups_it_shows(tmp_path: Path) -> None:
    """The tile's caption and legend count the segments present in the map (not those of the list) and
    their groups; written files decode to the maps."""
    from unseg.unsupervised.per_image import ImageSegmentation
    from unseg.visualisation.overlay import palette
    from unseg.visualisation.photos import OUTPUT_FOLDERS, write_image

    for folder in OUTPUT_FOLDERS:
        (tmp_path / folder).mkdir()
    segments = np.zeros((6, 8), np.int32)
    segments[:, 4:] = 3  # segments 1 and 2 are listed but absent from the map
    groups = np.array([5, 1, 2, 0])  # present: segment 0 -> group 5, segment 3 -> group 0
    result = ImageSegmentation(segments, groups, np.array([True, False, False, False]))
    written = write_image(tmp_path, "x", Image.new("RGB", (8, 6)), result, palette(6))
    assert written.groups == {0, 5}
    assert written.item.caption.startswith("8x6, 2 segments, 2 groups, foreground 50%")
    assert (np.asarray(Image.open(tmp_path / "labels" / "x.png")) == groups[segments]).all()
    one = ImageSegmentation(np.zeros((6, 8), np.int32), np.array([2]), np.array([False]))
    assert write_image(tmp_path, "y", Image.new("RGB", (8, 6)), one, palette(6)).item.caption == (
        "8x6, 1 segment, 1 group, foreground 100%"
    )


def _stego_checkpoint(path: Path) -> Path:
    import torch

    from unseg.methods.stego import ClusterProbe, LinearProbe, StegoHead, save_stego

    torch.manual_seed(0)
    save_stego(
        path, StegoHead(432, 8).eval(), ClusterProbe(8, 6), LinearProbe(8, 6), {"backbone": "efficientnet_lite0"}
    )
    return path


SWITCHES = [
    *[
        (method, crf, upsample)
        for method in ("kmeans", "cd", "stego")
        for crf in (False, True)
        for upsample in ("none", "bilinear", "guided")
        if HAS_CRF or not crf
    ],
    ("spectral", False, None),
]


@pytest.mark.parametrize(("method", "crf", "upsample"), SWITCHES)
def test_every_method_runs_from_the_cli_with_each_switch(photos, tmp_path, method, crf, upsample):
    """Every segmenting method, with and without the CRF, through each upsampler, from the command line: each
    image's three maps are written at its own size, with ids the run's groups."""
    from unseg.cli import main

    args = [str(photos), "--out", str(tmp_path / "out"), "--method", method, "--input-size", "224", "--workers", "0"]
    if method == "stego":
        args += ["--checkpoint", str(_stego_checkpoint(tmp_path / "stego.ckpt"))]
    elif method != "spectral":
        args += ["--k", "4", "--niter", "5", "--nredo", "1"] if method == "kmeans" else ["--cd-k", "6"]
    args += ["--crf"] * crf + (["--upsample", upsample] if upsample else [])
    assert main(["segment", *args]) == 0
    sizes = {"0016E5_07959": (480, 360), "0016E5_07969": (480, 360), "odd size": (200, 290)}
    for name, size in sizes.items():
        maps = [Image.open(tmp_path / "out" / kind / f"{name}.png") for kind in ("labels", "segments", "foreground")]
        assert all(m.size == size for m in maps)
    assert np.asarray(maps[2]).max() in (0, 255)
