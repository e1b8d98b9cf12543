"""Issue 22 beyond bad values (``unseg docs reliability``): runs are never lost or mixed, a resume never runs code,
full and read-only disks and damaged caches are one line with nothing under a final name, a cache answers
only for the bytes it saw, and the commands' own behaviour (logging once, no empty folders left, no stale
segment files, PCA said as applied, a head on the wrong backbone, a batch larger than the data)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unseg.cli import main
from unseg.datasets import create_dataset
from unseg.demo import sample_root
from unseg.errors import CacheError, LayoutError, OutputError, SettingError
from unseg.features import FeatureCache, extract_features


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (links as their target): what must stay byte-identical."""
    return {
        str(p.relative_to(root)): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def one_line(code: int, err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("unseg: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def run_cli(argv: list, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


# --- runs are never lost or mixed ------------------------------------------------------------------------


@pytest.fixture
def stego_run(tmp_path, feature_cache, stego_config):
    """A 10-image feature cache, its kNN table, a small config and ``train(out, **kw)`` = train_stego into ``out``."""
    from unseg.methods.stego import train_stego

    rng = np.random.default_rng(0)
    cache = feature_cache(tmp_path / "cache", rng.normal(size=(10, 16, 4, 4)).astype(np.float32))
    knn = np.array([[i] + [(i + j) % 10 for j in range(1, 5)] for i in range(10)])

    def train(out: Path, cfg=None, **kwargs):
        return train_stego(cfg or stego_config(), cache, knn, out_dir=out, **kwargs)

    return train


def test_a_second_run_into_a_run_folder_is_refused_and_leaves_it_byte_identical(stego_run, tmp_path, capsys):
    out = tmp_path / "run"
    stego_run(out)
    before = snapshot(out)
    assert {"config.yaml", "stego.ckpt", "checkpoints/last.ckpt"} <= set(before)
    with pytest.raises(SettingError, match="holds a run .*--resume last.*--overwrite"):
        stego_run(out)
    (tmp_path / "c.yaml").write_text("dataset: folder\nn_classes: 2\n")
    code, err = run_cli(["train", "stego", "--config", tmp_path / "c.yaml", f"root={tmp_path}", "--out", out], capsys)
    one_line(code, err, f"run folder {out} holds a run", "config.yaml", "stego.ckpt", "--resume last", "--overwrite")
    assert snapshot(out) == before


def test_overwrite_replaces_the_run_without_a_versioned_checkpoint_beside_it(stego_run, stego_config, tmp_path):
    out = tmp_path / "run"
    stego_run(out)
    (out / "logs" / "stale-file").write_text("from the earlier run")
    with pytest.raises(SettingError, match="one of them"):
        stego_run(out, resume="last", overwrite=True)
    stego_run(out, stego_config(seed=1), overwrite=True)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]  # no last-v1.ckpt
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["version_0"]
    assert "seed: 1" in (out / "config.yaml").read_text()


def test_a_resume_that_does_not_fit_leaves_the_run_byte_identical(stego_run, stego_config, tmp_path):
    out = tmp_path / "run"
    stego_run(out)
    before = snapshot(out)
    with pytest.raises(SettingError, match="does not fit this run's model .*other shapes: cluster_probe"):
        stego_run(out, stego_config(dim=6), resume="last")  # the config changed: another code dimension
    other = tmp_path / "other.ckpt"  # another method's training checkpoint (keys of a Leopart run)
    torch.save({"state_dict": {"model.cls_token": torch.zeros(1, 1, 4)}, "loops": {}}, other)
    with pytest.raises(SettingError, match=r"does not fit .*missing .*unexpected \(e.g. model.cls_token\)"):
        stego_run(out, resume=other)
    assert snapshot(out) == before  # config.yaml and every checkpoint as they were


class RunsCode:
    """Pickled as a call of ``exec``: unpickling it writes the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A zip checkpoint that looks like a training checkpoint (state_dict, loops) and runs code when unpickled."""
    torch.save({"state_dict": {}, "loops": {}, "payload": RunsCode(marker)}, path)
    return path


def test_a_crafted_resume_checkpoint_runs_no_code_even_when_torch_is_told_to_unpickle(stego_run, tmp_path, monkeypatch):
    from lightning.fabric.utilities.cloud_io import _load

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    evil = crafted_checkpoint(tmp_path / "evil.ckpt", tmp_path / "proof")
    _load(str(evil))  # what Lightning's own reading does with it under this setting: the code runs
    assert (tmp_path / "proof").read_text() == "code ran"

    marker = tmp_path / "marker"
    evil = crafted_checkpoint(tmp_path / "evil2.ckpt", marker)
    with pytest.raises(SettingError, match="evil2.ckpt was not loaded: .*builtins.exec.*could run code"):
        stego_run(tmp_path / "run", resume=evil)
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_a_crafted_resume_checkpoint_is_one_line_from_train_leopart(tiny_leopart, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    images = tiny_leopart.images(tmp_path / "images")
    (tmp_path / "c.yaml").write_text(
        f"dataset: folder\nbackbone: {tiny_leopart.backbone}\nweights: random\n"
        "hidden_dim: 32\ndim: 16\nnum_prototypes: 10\nbatch_size: 2\nnum_workers: 0\n"
        "accelerator: cpu\ncrops: {global_size: 48, local_size: 32}\n"
    )
    marker = tmp_path / "marker"
    evil = crafted_checkpoint(tmp_path / "evil.ckpt", marker)
    code, err = run_cli(
        [
            "train",
            "leopart",
            "--config",
            tmp_path / "c.yaml",
            f"root={images}",
            "--out",
            tmp_path / "run",
            "--resume",
            evil,
        ],
        capsys,
    )
    one_line(code, err, "--resume", "evil.ckpt was not loaded", "could run code")
    assert not marker.exists() and not (tmp_path / "run").exists()


# --- full and read-only disks -------------------------------------------------------------------------------


def no_partial_files(root: Path) -> None:
    """Nothing under a final name is cut short, and no temporary file is left."""
    for path in root.rglob("*"):
        assert ".tmp" not in path.name, path
        if path.suffix == ".npy":
            np.load(path)
        elif path.suffix == ".png":
            Image.open(path).load()
        elif path.suffix in (".json", ".ckpt") and path.is_file():
            json.loads(path.read_text()) if path.suffix == ".json" else torch.load(path, weights_only=False)


@pytest.fixture(scope="module")
def camvid_cli(tmp_path_factory) -> list[str]:
    """Source options of the shipped CamVid sample (20 val images) at 32 px, with a cache the module shares."""
    cache = tmp_path_factory.mktemp("cache")
    return ["--root", str(sample_root()), "--input-size", "32", "--workers", "0", "--cache-dir", str(cache)]


def test_extraction_on_a_full_disk_is_one_line_and_leaves_no_shard_cut_short(small_disk, capsys):
    disk = small_disk(size="64k")
    code, err = run_cli(
        ["extract", "--root", sample_root(), "--input-size", "64", "--workers", "0", "--cache-dir", disk / "cache"],
        capsys,
    )
    one_line(code, err, "cannot write", "shard-00000", "No space left on device", "the disk is full")
    (cache,) = (disk / "cache").iterdir()
    assert not (cache / "COMPLETE").exists() and not (cache / "shard-00000.json").exists()
    no_partial_files(disk)


def test_segment_on_a_full_disk_is_one_line_and_leaves_no_image_cut_short(small_disk, tmp_path, capsys, image_folder):
    disk = small_disk(size="32k")
    images = image_folder(tmp_path / "photos", 3, size=(160, 120))
    code, err = run_cli(
        ["segment", images, "--out", disk / "out", "--input-size", "64", "--k", "1", "--workers", "0"], capsys
    )
    one_line(code, err, "cannot write", "No space left on device")
    no_partial_files(disk)
    assert not (disk / "out" / "index.html").exists()


def fill(disk: Path) -> Path:
    """Fill ``disk`` to its last page; the filler file is returned (remove it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_the_knn_table_on_a_full_disk_is_an_output_error(small_disk, feature_cache):
    from unseg.methods.stego.knn import knn_indices, knn_path

    disk = small_disk(size="256k")
    cache = feature_cache(disk / "cache", np.random.default_rng(0).normal(size=(40, 8, 2, 2)).astype(np.float32))
    fill(disk)
    with pytest.raises(OutputError, match=r"cannot write .*knn-5\.npy: No space left on device"):
        knn_indices(cache, 5)
    assert not knn_path(cache, 5).exists()
    no_partial_files(disk / "cache")


def test_stego_training_on_a_full_disk_is_an_output_error_and_leaves_no_checkpoint(
    small_disk, feature_cache, stego_config, tmp_path
):
    from unseg.methods.stego import train_stego

    cache = feature_cache(tmp_path / "cache", np.random.default_rng(0).normal(size=(10, 64, 4, 4)).astype(np.float32))
    knn = np.array([[i] + [(i + j) % 10 for j in range(1, 5)] for i in range(10)])
    run = small_disk(size="64k") / "run"  # room for the config and logs, not for a checkpoint of this head
    with pytest.raises(OutputError, match=r"cannot write .*last\.ckpt: No space left on device"):
        train_stego(stego_config(dim=32, checkpoint_every=1), cache, knn, out_dir=run)
    assert (run / "config.yaml").exists() and not (run / "stego.ckpt").exists()
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())
    no_partial_files(run)


def test_leopart_training_on_a_full_disk_leaves_no_epoch_checkpoint_cut_short(
    tiny_leopart, small_disk, tmp_path, capsys
):
    disk = small_disk(size="512k")
    images = tiny_leopart.images(tmp_path / "images")
    (tmp_path / "c.yaml").write_text(
        f"dataset: folder\nbackbone: {tiny_leopart.backbone}\nweights: random\n"
        "hidden_dim: 32\ndim: 16\nnum_prototypes: 10\nbatch_size: 2\nnum_workers: 0\n"
        "accelerator: cpu\nepochs: 1\nqueue_length: 0\nprogress_bar: false\n"
        "checkpoint_every_epochs: 1\ncrops: {global_size: 48, local_size: 32}\n"
    )
    code, err = run_cli(
        ["train", "leopart", "--config", tmp_path / "c.yaml", f"root={images}", "--out", disk / "run"], capsys
    )
    one_line(code, err, "cannot write", "epoch=000.ckpt", "No space left on device")
    checkpoints = disk / "run" / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())  # no epoch=000.ckpt, no last.ckpt link
    no_partial_files(disk)


def test_writes_on_a_read_only_file_system_are_one_error(small_disk, capsys):
    from unseg.io import save_json

    disk = small_disk(read_only=True)
    with pytest.raises(OutputError, match=r"cannot write .*x\.json: Read-only file system") as caught:
        save_json({"a": 1}, disk / "x.json")
    assert caught.value.__suppress_context__  # the cleanup's own failure is not a second error
    code, err = run_cli(
        ["extract", "--root", sample_root(), "--input-size", "32", "--cache-dir", disk / "cache"], capsys
    )
    one_line(code, err, "feature cache folder", "cannot be written", "Read-only file system")


# --- a damaged cache -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage, needle",
    [
        (
            lambda root: (root / "shard-00000.feats.npy").write_bytes(
                (root / "shard-00000.feats.npy").read_bytes()[:200]
            ),
            "shard-00000.feats.npy is damaged",
        ),
        (lambda root: (root / "shard-00001.sal.npy").unlink(), "shard-00001.sal.npy is damaged (missing)"),
        (lambda root: (root / "meta.json").write_text('{"num_shards": '), "meta.json is damaged"),
        (lambda root: (root / "shard-00000.json").write_text("[]"), "shard-00000.json is damaged"),
    ],
)
def test_a_damaged_cache_is_a_cache_error_naming_the_file(tmp_path, feature_cache, damage, needle):
    root = tmp_path / "cache"
    feature_cache(root, np.ones((6, 8, 2, 2), np.float32), shard_size=3)
    damage(root)
    with pytest.raises(CacheError, match=re.escape(needle) + ".*remove the folder"):
        FeatureCache(root)


def test_a_damaged_cache_is_one_line_from_an_evaluation(camvid_cli, capsys):
    assert main(["extract", *camvid_cli]) == 0
    (cache,) = Path(camvid_cli[-1]).glob("camvid-val-*")
    shard = cache / "shard-00000.feats.npy"
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])
    try:
        code, err = run_cli(["eval", "cluster", *camvid_cli, "--k", "11", "--seeds", "1"], capsys)
        one_line(code, err, str(shard), "damaged", "remove the folder")
    finally:
        shard.write_bytes(good)


# --- a cache answers only for the bytes it saw ---------------------------------------------------------------


def same_size_images(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` uncompressed PNGs of 40x30, img00.png ...: the same byte size whatever their pixels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
            root / f"img{i:02d}.png", compress_level=0
        )
    return root


@pytest.mark.parametrize("how", ["in place", "renamed over"])
def test_an_image_replaced_with_the_same_size_and_mtime_is_noticed(tmp_path, tiny_vit, how):
    folder = same_size_images(tmp_path / "imgs", 3)
    backbone = tiny_vit()

    def extract():
        return extract_features(
            backbone,
            create_dataset("folder", folder, ""),
            32,
            cache_root=tmp_path / "cache",
            num_workers=0,
            progress=False,
        )

    first = extract()
    path = folder / "img01.png"
    st = path.stat()
    other = same_size_images(tmp_path / "other", 2, seed=5) / "img01.png"
    assert other.stat().st_size == st.st_size
    if how == "in place":
        path.write_bytes(other.read_bytes())
    else:
        os.replace(other, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the old modification time back
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    second = extract()
    assert second.root != first.root
    assert not np.allclose(second.features(1), first.features(1))
    np.testing.assert_allclose(second.features(0), first.features(0), rtol=1e-5, atol=1e-6)


def test_hashed_identity_follows_the_bytes_not_the_file(tmp_path, tiny_vit):
    folder = same_size_images(tmp_path / "imgs", 3)
    backbone = tiny_vit()
    calls = []
    inner = backbone.forward_with_saliency
    backbone.forward_with_saliency = lambda x: calls.append(len(x)) or inner(x)

    def extract():
        return extract_features(
            backbone,
            create_dataset("folder", folder, ""),
            32,
            cache_root=tmp_path / "cache",
            num_workers=0,
            progress=False,
            hash_images=True,
        )

    first = extract()
    path = folder / "img01.png"
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)  # a new inode and change time, the same bytes: the cache answers
    calls.clear()
    assert extract().root == first.root and calls == []
    st = path.stat()
    path.write_bytes(same_size_images(tmp_path / "other", 2, seed=5).joinpath("img01.png").read_bytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert extract().root != first.root


def test_stego_five_crops_follow_their_source_images(tmp_path, stego_config):
    from unseg.methods.stego.pipeline import split_data

    root = tmp_path / "camvid"
    same_size_images(root / "train", 4)  # CamVid's layout: the images, their label maps, the split's list
    (root / "trainannot").mkdir()
    for i in range(4):
        Image.fromarray(np.zeros((30, 40), np.uint8)).save(root / "trainannot" / f"img{i:02d}.png")
    (root / "train.txt").write_text("\n".join(f"img{i:02d}" for i in range(4)))
    cfg = stego_config(dataset="camvid", root=str(root), backbone="efficientnet_lite0", input_size=32, five_crop=True)
    first = split_data(cfg, "train", tmp_path / "cache" / "features")
    path = root / "train" / "img01.png"
    st = path.stat()
    path.write_bytes(same_size_images(tmp_path / "other", 2, seed=5).joinpath("img01.png").read_bytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = split_data(cfg, "train", tmp_path / "cache" / "features")
    assert second.dataset.root != first.dataset.root  # new crops, cut from the new image
    assert not np.allclose(second.cache.features(5), first.cache.features(5))  # img01's first crop


# --- images and folders ------------------------------------------------------------------------------------


def bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A small PNG file whose header says ``width`` x ``height`` (PIL refuses it before decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


def test_a_decompression_bomb_is_one_line_or_skipped(tmp_path, image_folder, capsys):
    folder = image_folder(tmp_path / "photos", 2)
    bomb_png(folder / "huge.png")
    code, err = run_cli(["segment", folder, "--out", tmp_path / "out", "--input-size", "32"], capsys)
    one_line(code, err, "huge.png", "too large to decode")
    assert not (tmp_path / "out").exists()
    code, err = run_cli(
        ["segment", folder, "--out", tmp_path / "out", "--input-size", "32", "--workers", "0", "--skip-invalid"], capsys
    )
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out" / "labels").iterdir()) == ["img00.png", "img01.png"]


def test_unreadable_folders_are_layout_errors(image_folder, as_nobody):
    from unseg.segment import collect_images

    root = Path(tempfile.mkdtemp(prefix="unseg-test-"))  # a folder ``nobody`` may enter
    try:
        root.chmod(0o755)
        images = image_folder(root / "images", 2)
        for path in (images, *images.iterdir()):
            path.chmod(0o755)
        masks = root / "masks"
        masks.mkdir(mode=0o000)
        private = images / "private"
        private.mkdir(mode=0o000)
        with as_nobody():
            with pytest.raises(LayoutError, match="masks.* cannot be read .*Permission denied"):
                create_dataset("folder", images, "", masks=masks)
            with pytest.raises(LayoutError, match="private cannot be read .*Permission denied"):
                collect_images([private])
    finally:
        shutil.rmtree(root)


# --- what the commands do ------------------------------------------------------------------------------------


def test_each_log_line_is_printed_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "unseg",
            "-v",
            "train",
            "stego",
            "--config",
            "camvid_effnet",
            f"root={sample_root()}",
            "train_split=val",
            "five_crop=false",
            "input_size=32",
            "knn_k=10",
            "batch_size=4",
            "max_steps=1",
            "num_workers=0",
            "progress_bar=false",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "run"),
            "--no-eval",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert any("Seed set to 0" in line for line in lines), lines
    repeated = [line for line in lines if sum(line.split(" ", 1)[-1] in other for other in lines) > 1]
    assert repeated == [], repeated


def test_a_failed_command_leaves_no_folder_it_made(camvid_cli, tmp_path, capsys):
    code, err = run_cli(
        [
            "eval",
            "cluster",
            *camvid_cli,
            "--k",
            "100000",
            "--seeds",
            "1",
            "--report",
            tmp_path / "new" / "report",
            "--json",
            tmp_path / "newer" / "r.json",
        ],
        capsys,
    )
    one_line(code, err, "K = 100000")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_segment_into_a_folder_of_an_earlier_run_keeps_only_this_runs_images(tmp_path, image_folder):
    from unseg.segment import segment

    out = tmp_path / "out"
    segment(image_folder(tmp_path / "first", 3), out_dir=out, input_size=32, num_workers=0)
    (out / "notes.txt").write_text("the user's own file")
    second = image_folder(tmp_path / "second", 2, seed=1)
    for i, path in enumerate(sorted(second.iterdir())):
        path.rename(second / f"new{i}.png")
    segment(second, out_dir=out, input_size=32, num_workers=0)
    for folder in ("labels", "segments", "foreground", "panels"):
        assert sorted(p.stem for p in (out / folder).iterdir()) == ["new0", "new1"]
    assert (out / "notes.txt").exists() and "img00" not in (out / "index.html").read_text()


def test_a_pca_dimension_above_the_feature_width_is_said_not_to_apply(camvid_cli, tmp_path, capsys):
    code = main(
        [
            "eval",
            "cluster",
            *camvid_cli,
            "--k",
            "11",
            "--seeds",
            "1",
            "--nredo",
            "1",
            "--pca-dim",
            "5000",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "StandardScaler, no PCA (PCA 5000 asked: not fewer than the feature width)" in printed
    assert "PCA 5000," not in printed
    (result,) = json.loads((tmp_path / "r.json").read_text())
    assert result["settings"]["pca_dim"] is None and result["settings"]["pca_dim_asked"] == 5000


def test_a_stego_head_of_another_backbone_width_is_one_line(camvid_cli, tmp_path, capsys, image_folder):
    from unseg.methods.stego import ClusterProbe, LinearProbe, StegoHead, save_stego

    ckpt = tmp_path / "stego.ckpt"
    save_stego(ckpt, StegoHead(16, 8), ClusterProbe(8, 11), LinearProbe(8, 11), {"dim": 8})
    cache = camvid_cli[camvid_cli.index("--cache-dir") + 1]
    code, err = run_cli(
        [
            "eval",
            "stego",
            "--config",
            "camvid_effnet",
            f"root={sample_root()}",
            "val_input_size=32",
            "--checkpoint",
            ckpt,
            "--cache-dir",
            cache,
        ],
        capsys,
    )
    one_line(code, err, "trained on 16-d features", "432-d")
    code, err = run_cli(
        [
            "segment",
            image_folder(tmp_path / "photos", 2),
            "--method",
            "stego",
            "--checkpoint",
            ckpt,
            "--out",
            tmp_path / "out",
            "--input-size",
            "32",
        ],
        capsys,
    )
    one_line(code, err, "trained on 16-d features", "432-d")


def test_a_config_batch_larger_than_the_data_is_one_line_before_the_run_writes(camvid_cli, tmp_path, capsys):
    cache = camvid_cli[camvid_cli.index("--cache-dir") + 1]
    code, err = run_cli(
        [
            "train",
            "stego",
            "--config",
            "camvid_effnet",
            f"root={sample_root()}",
            "train_split=val",
            "five_crop=false",
            "input_size=32",
            "knn_k=10",
            "batch_size=64",
            "--cache-dir",
            cache,
            "--out",
            tmp_path / "run",
        ],
        capsys,
    )
    one_line(code, err, "20 training images", "batch_size=64", "lower key 'batch_size'")
    assert not (tmp_path / "run").exists()
