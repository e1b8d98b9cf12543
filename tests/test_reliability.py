"""Reliability (``unseg docs reliability``): a cache answers only for the files it was built from, every user
error is one line with exit status 2, images decode as viewers show them, and a resumed STEGO run
equals an uninterrupted one (downloads that give up: test_downloads.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unseg.cli import main
from unseg.datasets import create_dataset
from unseg.errors import ConfigError, ImageError, SettingError, UnsegError
from unseg.features import extract_features
from unseg.features.cache import cached_masks

SIZE = (32, 48)


def extract(backbone, dataset, root, **kw):
    return extract_features(backbone, dataset, SIZE, cache_root=root, batch_size=2, num_workers=0, progress=False, **kw)


def write_masks(folder: Path, n: int, size: tuple[int, int] = (40, 30), split: int = 20) -> Path:
    """``n`` label maps img00.png ...: class 0 left of column ``split``, class 1 right of it."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        mask = np.zeros((size[1], size[0]), np.uint8)
        mask[:, split:] = 1
        Image.fromarray(mask).save(folder / f"img{i:02d}.png")
    return folder


def touch_later(path: Path) -> None:
    """Move a file's modification time forward, so a rewrite within the clock's resolution still counts."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def plain_masks(dataset, size: tuple[int, int]) -> np.ndarray:
    from unseg.features import resize_mask

    return np.stack([resize_mask(dataset[i]["mask"], size) for i in range(len(dataset))])


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("unseg: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# --- a cache answers for what it was built from ------------------------------------------------------


def test_fixed_mask_other_masks_folder_or_num_classes_remake_the_cached_masks(tmp_path, image_folder, tiny_vit):
    images = image_folder(tmp_path / "imgs", 3)
    masks = write_masks(tmp_path / "masks", 3)
    dataset = create_dataset("folder", images, "", masks=masks, num_classes=2)
    cache = extract(tiny_vit(), dataset, tmp_path / "cache")
    first = cached_masks(cache, dataset, (6, 8))
    np.testing.assert_array_equal(first, plain_masks(dataset, (6, 8)))
    # a mask fixed in place: same length, so the old rule reused the stale maps
    fixed = np.zeros((30, 40), np.uint8)
    Image.fromarray(fixed).save(masks / "img01.png")
    touch_later(masks / "img01.png")
    again = cached_masks(cache, dataset, (6, 8))
    np.testing.assert_array_equal(again, plain_masks(dataset, (6, 8)))
    assert (again[1] == 0).all() and not np.array_equal(again, first)
    # another masks folder, then another number of classes (1 marks class 1 as ignored)
    other = write_masks(tmp_path / "other", 3, split=10)
    moved = create_dataset("folder", images, "", masks=other, num_classes=2)
    np.testing.assert_array_equal(cached_masks(cache, moved, (6, 8)), plain_masks(moved, (6, 8)))
    fewer = create_dataset("folder", images, "", masks=other, num_classes=1)
    got = cached_masks(cache, fewer, (6, 8))
    np.testing.assert_array_equal(got, plain_masks(fewer, (6, 8)))
    assert (got == 255).any()


def test_a_skipping_cache_does_not_answer_without_skip_corrupt_and_a_repaired_image_is_extracted(
    tmp_path, image_folder, tiny_vit
):
    folder = image_folder(tmp_path / "imgs", 5)
    good = (folder / "img03.png").read_bytes()
    (folder / "img03.png").write_bytes(b"not a png")
    backbone = tiny_vit()
    skipping = extract(backbone, create_dataset("folder", folder, ""), tmp_path / "cache", skip_corrupt=True)
    assert skipping.skipped == ["img03"] and len(skipping) == 4
    with pytest.raises(ImageError, match="img03.png"):  # as a fresh run without --skip-corrupt would
        extract(backbone, create_dataset("folder", folder, ""), tmp_path / "cache")
    (folder / "img03.png").write_bytes(good)  # repaired
    repaired = extract(backbone, create_dataset("folder", folder, ""), tmp_path / "cache")
    fresh = extract(backbone, create_dataset("folder", folder, ""), tmp_path / "fresh")
    assert repaired.root != skipping.root and repaired.skipped == [] and repaired.ids == fresh.ids
    assert len(repaired) == 5
    for i in range(5):
        np.testing.assert_array_equal(repaired.features(i), fresh.features(i))


def test_a_float16_cache_with_its_own_shard_size_is_the_one_a_default_run_finds(tmp_path, image_folder, tiny_vit):
    dataset = create_dataset("folder", image_folder(tmp_path / "imgs", 5), "")
    backbone = tiny_vit()
    reference = extract(backbone, dataset, tmp_path / "ref")
    half = extract(backbone, dataset, tmp_path / "cache", shard_size=2, dtype="float16")
    calls = []
    inner = backbone.forward_with_saliency
    backbone.forward_with_saliency = lambda x: calls.append(len(x)) or inner(x)
    found = extract(backbone, dataset, tmp_path / "cache")  # eval's defaults: shard size 256, float32
    assert calls == [] and found.root == half.root and found.meta["dtype"] == "float16"
    for i in range(5):
        assert found.features(i).dtype == np.float32
        np.testing.assert_allclose(found.features(i), reference.features(i), rtol=1e-2, atol=1e-2)


def test_a_read_only_complete_cache_serves_an_evaluation(tmp_path, monkeypatch, capsys, image_folder):
    images = image_folder(tmp_path / "imgs", 4)
    masks = write_masks(tmp_path / "masks", 4)
    source = [
        "--root",
        images,
        "--dataset",
        "folder",
        "--masks",
        masks,
        "--num-classes",
        "2",
        "--input-size",
        "32",
        "--cache-dir",
        tmp_path / "cache",
        "--workers",
        "0",
    ]
    assert main([str(a) for a in ["extract", "--split", "", *source]]) == 0

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    import unseg.features.cache as cache_module
    import unseg.features.extract as extract_module

    monkeypatch.setattr(cache_module, "save_npy", refuse)  # root ignores chmod: refuse every write instead
    monkeypatch.setattr(cache_module, "save_json", refuse)
    monkeypatch.setattr(extract_module, "require_writable", refuse)
    code, err = run_cli(["eval", "cluster", *source, "--split", "", "--k", "2", "--seeds", "1", "--nredo", "1"], capsys)
    assert code == 0, err


# --- one line, exit status 2 -----------------------------------------------------------------------------


@pytest.fixture
def labelled(tmp_path, image_folder) -> list:
    """CLI source options of 4 labelled 40x30 images with the offline backbone at 32 px."""
    images = image_folder(tmp_path / "imgs", 4)
    masks = write_masks(tmp_path / "masks", 4)
    return [
        "--root",
        images,
        "--dataset",
        "folder",
        "--masks",
        masks,
        "--num-classes",
        "2",
        "--input-size",
        "32",
        "--cache-dir",
        tmp_path / "cache",
        "--split",
        "",
    ]


def test_corrupt_image_with_loader_workers_is_one_line_naming_it(labelled, capsys):
    root = Path(labelled[1])
    (root / "img02.png").write_bytes(b"not a png")
    code, err = run_cli(["eval", "cluster", *labelled, "--workers", "2", "--k", "2", "--seeds", "1"], capsys)
    assert_one_line_error(code, err, "img02.png", "corrupt")


def test_unwritable_cache_or_out_folder_fails_before_any_compute(labelled, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = [*labelled[:-4], "--cache-dir", blocker / "cache", "--workers", "0"]
    code, err = run_cli(["eval", "cluster", *args, "--split", "", "--k", "2"], capsys)
    assert_one_line_error(code, err, "--cache-dir", str(blocker), "is a file, not a folder")

    import importlib

    segment_module = importlib.import_module("unseg.segment")  # the package's ``segment`` is the function
    monkeypatch.setattr(segment_module, "load_split", lambda *a, **k: pytest.fail("computed first"))
    code, err = run_cli(["segment", labelled[1], "--out", blocker / "out", "--input-size", "32"], capsys)
    assert_one_line_error(code, err, str(blocker / "out"), "cannot be written")


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--input-size", "450"], ["input size 450", "positive multiple of the backbone stride 16"]),
        (["--input-size", "0"], ["--input-size", "each >= 1"]),  # refused as it is parsed (tests/test_harness.py)
        (["--k", "100000"], ["K = 100000", "between 1 and", "16"]),
    ],
)
def test_bad_clustering_values_are_one_line(labelled, capsys, argv, needles):
    args = [*labelled, "--workers", "0", "--k", "2", "--nredo", "1", *argv]  # argparse keeps the last --k
    code, err = run_cli(["eval", "cluster", *args], capsys)
    assert_one_line_error(code, err, *needles)


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--cd-k", "1", "--markov-time", "1", "--weight-threshold", "0.01"], ["k=1", "k must be >= 2"]),
        (["--cd-k", "50", "--markov-time", "1"], ["lack weight_threshold", "none of them"]),
    ],
)
def test_bad_unsupervised_values_are_one_line_before_any_work(labelled, capsys, monkeypatch, argv, needles):
    import importlib

    protocols = importlib.import_module("unseg.protocols")
    monkeypatch.setattr(protocols.Source, "load_split", lambda *a, **k: pytest.fail("extracted first"))
    code, err = run_cli(["eval", "unsupervised", *labelled, *argv], capsys)
    assert_one_line_error(code, err, *needles)


def test_segment_k_more_than_the_tokens_is_one_line(tmp_path, capsys, image_folder):
    images = image_folder(tmp_path / "imgs", 2)
    code, err = run_cli(
        [
            "segment",
            images,
            "--method",
            "kmeans",
            "--out",
            tmp_path / "out",
            "--k",
            "9",
            "--input-size",
            "32",
            "--workers",
            "0",
        ],
        capsys,
    )
    assert_one_line_error(code, err, "k = 9", "8 feature tokens", "k <= 8")


@pytest.fixture
def stego_yaml(tmp_path) -> Path:
    path = tmp_path / "stego.yaml"
    path.write_text(
        "dataset: camvid\nn_classes: 11\nbackbone: efficientnet_lite0\ninput_size: 32\n"
        "val_input_size: 32\nfive_crop: false\nbatch_size: 4\nnum_workers: 0\naccelerator: cpu\n"
    )
    return path


@pytest.mark.parametrize(
    "override, needles",
    [
        ("precision=bogus", ["'precision' = 'bogus'", "32-true"]),
        ("batch_size=0", ["'batch_size' = 0", "at least 1"]),
        ("accelerator=bogus", ["'accelerator' = 'bogus'", "cpu"]),
    ],
)
def test_bad_config_values_are_one_line(stego_yaml, tmp_path, capsys, override, needles):
    code, err = run_cli(
        ["train", "stego", "--config", stego_yaml, "root=.", override, "--out", tmp_path / "run"], capsys
    )
    assert_one_line_error(code, err, *needles)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_accelerator_without_a_gpu_is_one_line(stego_yaml, tmp_path, capsys):
    code, err = run_cli(
        ["train", "stego", "--config", stego_yaml, "root=.", "accelerator=gpu", "--out", tmp_path / "run"], capsys
    )
    assert_one_line_error(code, err, "'accelerator' = 'gpu'", "accelerator=cpu")


def test_knn_k_larger_than_the_dataset_is_one_line(stego_yaml, tmp_path, capsys, image_folder):
    root = tmp_path / "camvid"
    image_folder(root / "train", 6)
    write_masks(root / "trainannot", 6)
    (root / "train.txt").write_text("\n".join(f"img{i:02d}" for i in range(6)))
    code, err = run_cli(
        ["stego", "knn", "--config", stego_yaml, f"root={root}", "knn_k=30", "--cache-dir", tmp_path / "cache"], capsys
    )
    assert_one_line_error(code, err, "knn_k = 30", "between 1 and 6")


def test_resume_of_nothing_or_of_a_non_checkpoint_is_one_line(stego_yaml, tmp_path, capsys):
    (tmp_path / "junk.ckpt").write_bytes(b"\x00" * 100)
    torch.save({"state_dict": {}}, tmp_path / "weights_only.ckpt")  # a weights file, not a run's checkpoint
    for resume, needles in (
        ("last", ["--resume last", "no checkpoint", "leave out --resume"]),
        (tmp_path / "missing.ckpt", ["--resume", "missing.ckpt", "no such file"]),
        (tmp_path / "junk.ckpt", ["junk.ckpt", "not a training checkpoint"]),
        (tmp_path / "weights_only.ckpt", ["weights_only.ckpt", "not a training checkpoint"]),
    ):
        code, err = run_cli(
            ["train", "stego", "--config", stego_yaml, "root=.", "--out", tmp_path / "run", "--resume", resume], capsys
        )
        assert_one_line_error(code, err, *needles)


def test_worker_errors_read_as_their_own_message():
    wrapped = ImageError(
        "Caught ImageError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
        'last):\n  File "x.py", line 1, in f\nunseg.errors.ImageError: image /a/b.png is corrupt\n'
    )
    assert str(wrapped) == "image /a/b.png is corrupt"
    assert str(ImageError("image /a/b.png is corrupt")) == "image /a/b.png is corrupt"


# --- images as viewers show them ---------------------------------------------------------------------------


def test_exif_rotated_jpeg_and_16_bit_png_segment_at_their_displayed_size(tmp_path):
    """Each gives the labels of a plain 8-bit PNG of what a viewer shows (the reference), which has
    more than one segment."""
    from unseg.segment import segment

    def run(path: Path) -> np.ndarray:
        return segment(path, method="kmeans", k=2, input_size=64, num_workers=0, nredo=1).results[0].labels

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 90, (48, 64, 3), np.uint8)  # stored 64x48: dark noise left, bright noise right
    rgb[:, 32:] += 160
    photo = Image.fromarray(rgb)
    exif = photo.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": a viewer shows it 48 wide, 64 high
    photo.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    with Image.open(tmp_path / "phone.jpg") as stored:  # the reference: the decoded pixels turned by hand
        stored.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "phone_shown.png")
    shown = run(tmp_path / "phone_shown.png")
    assert shown.shape == (64, 48) and len(np.unique(shown)) > 1
    np.testing.assert_array_equal(run(tmp_path / "phone.jpg"), shown)

    grey = rng.integers(0, 90 * 257, (48, 64)).astype(np.uint16)  # the same pattern on the 16-bit scale
    grey[:, 32:] += 160 * 257
    Image.fromarray(grey).save(tmp_path / "depth.png")
    assert Image.open(tmp_path / "depth.png").mode.startswith("I")
    Image.fromarray(np.rint(grey / 257).astype(np.uint8)).save(tmp_path / "depth8.png")
    reference = run(tmp_path / "depth8.png")
    assert reference.shape == (48, 64) and len(np.unique(reference)) > 1
    np.testing.assert_array_equal(run(tmp_path / "depth.png"), reference)


def test_16_bit_and_other_modes_decode_to_scaled_rgb(tmp_path):
    from unseg.datasets.base import read_image

    grey = np.array([[0, 257 * 100], [65535, 257 * 200]], np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "g16.png"))[..., 0], [[0, 100], [255, 200]])
    rgb = np.random.default_rng(0).integers(0, 256, (6, 8, 3), np.uint8)
    for mode in ("L", "P", "RGBA", "LA", "1"):
        Image.fromarray(rgb).convert(mode).save(tmp_path / f"{mode}.png")
        out = read_image(tmp_path / f"{mode}.png")
        assert out.mode == "RGB" and out.size == (8, 6)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert read_image(tmp_path / "cmyk.jpg").mode == "RGB"


# --- a resumed STEGO run is the uninterrupted run ---------------------------------------------------------


def test_stego_killed_after_a_checkpoint_and_resumed_equals_the_uninterrupted_run(
    tmp_path, monkeypatch, feature_cache, stego_config
):
    from unseg.methods.stego import StegoConfig, StegoModule, train_stego

    rng = np.random.default_rng(0)
    cache = feature_cache(tmp_path / "cache", rng.normal(size=(10, 16, 5, 5)).astype(np.float32))
    masks = rng.integers(0, 2, (10, 5, 5)).astype(np.uint8)
    knn = np.array([[i] + [(i + j) % 10 for j in range(1, 5)] for i in range(10)])

    def cfg(max_steps: int) -> StegoConfig:  # 2 batches an epoch: the checkpoint at step 3 is mid-epoch
        return stego_config(dropout=0.1, max_steps=max_steps, checkpoint_every=3)

    whole = train_stego(cfg(7), cache, knn, masks=masks, out_dir=tmp_path / "whole")

    def crash(module, outputs, batch, batch_idx):
        if module.global_step == 5:
            raise RuntimeError("killed")

    with monkeypatch.context() as m:
        m.setattr(StegoModule, "on_train_batch_end", crash, raising=False)
        with pytest.raises(RuntimeError, match="killed"):
            train_stego(cfg(7), cache, knn, masks=masks, out_dir=tmp_path / "run")
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    torch.manual_seed(123)  # the process's generator state must not matter
    resumed = train_stego(cfg(7), cache, knn, masks=masks, out_dir=tmp_path / "run", resume="last")
    assert resumed.global_step == whole.global_step == 7
    ours, theirs = resumed.state_dict(), whole.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_api_raises_the_same_errors(tmp_path, image_folder, tiny_vit):
    """What the CLI reports comes from the API: the same UnsegError subclasses."""
    from unseg.config import load_config
    from unseg.methods.stego import StegoConfig

    dataset = create_dataset("folder", image_folder(tmp_path / "imgs", 2), "")
    with pytest.raises(SettingError, match="input size 450"):
        extract_features(tiny_vit(), dataset, 450, cache_root=tmp_path / "c", progress=False)
    with pytest.raises(ConfigError, match="'batch_size' = 0"):
        load_config(StegoConfig, None, ["batch_size=0"])
    assert issubclass(SettingError, UnsegError) and issubclass(SettingError, ValueError)
