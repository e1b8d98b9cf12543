"""STEGO from the command line on the shipped sample: train, checkpoint, evaluate, sweep baselines."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from unseg.cli import main
from unseg.config import load_config
from unseg.demo import sample_root
from unseg.methods.projections import projection_head
from unseg.methods.stego import load_stego
from unseg.methods.stego.pipeline import evaluate_run, fit_stego, split_data
from unseg.methods.stego.train import StegoConfig

CONFIG = "stego/camvid_effnet"  # a shipped config, by name
TINY = [
    f"root={sample_root()}",
    "train_split=val",
    "val_split=val",
    "input_size=224",
    "val_input_size=224",
    "max_steps=4",
    "batch_size=4",
    "num_workers=0",
    "progress_bar=false",
    "knn_k=10",
    "checkpoint_every=2",
]


@pytest.mark.slow
def test_train_then_eval_a_checkpoint_from_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["train", "stego", "--config", CONFIG, *TINY, "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
        == 0
    )
    printed = capsys.readouterr().out
    assert "cluster probe: mIoU" in printed and "linear probe" in printed
    head, cluster_probe, linear_probe, meta = load_stego(out / "stego.ckpt", n_classes=11)
    assert (meta["dim"], meta["feat_dim"], meta["n_classes"]) == (70, 432, 11)
    assert (out / "checkpoints" / "last.ckpt").exists() and (out / "config.yaml").exists()
    # the kNN table was built on demand beside the training cache, and reused by `stego knn`
    (knn_file,) = (tmp_path / "cache").glob("*/knn-10.npy")
    knn = np.load(knn_file)
    assert knn.shape == (20, 10) and (knn[:, 0] == np.arange(20)).all()
    assert main(["stego", "knn", "--config", CONFIG, *TINY, "--cache-dir", str(tmp_path / "cache")]) == 0
    assert np.array_equal(np.load(knn_file), knn)

    capsys.readouterr()
    report = tmp_path / "scores.json"
    assert (
        main(
            [
                "eval",
                "stego",
                "--config",
                CONFIG,
                *TINY,
                "--checkpoint",
                str(out / "stego.ckpt"),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--json",
                str(report),
            ]
        )
        == 0
    )
    scores = json.loads(report.read_text())
    val = split_data(load_config(StegoConfig, CONFIG, TINY), "val", tmp_path / "cache")
    again = evaluate_run(out / "stego.ckpt", val, 11)  # the same checkpoint scored from Python
    assert scores["cluster"]["miou"] == pytest.approx(again.cluster.miou)
    assert scores["linear"]["miou"] == pytest.approx(again.linear.miou)
    assert sorted(scores["mapping"]) == list(range(11))
    # the same head scored on features seen through windows: their own cache, the view in the JSON
    assert (
        main(
            [
                "eval",
                "stego",
                "--config",
                CONFIG,
                *TINY,
                "--checkpoint",
                str(out / "stego.ckpt"),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--json",
                str(report),
                "--window",
                "112",
            ]
        )
        == 0
    )
    windowed = json.loads(report.read_text())
    assert windowed["backbone_view"] == "EfficientNetLite0-win112o0.25"
    val = split_data(load_config(StegoConfig, CONFIG, TINY), "val", tmp_path / "cache", views={"window": 112})
    assert val.cache.root.name.startswith("camvid-val-EfficientNetLite0-win112o0.25-224x224")
    assert windowed["cluster"]["miou"] == pytest.approx(evaluate_run(out / "stego.ckpt", val, 11).cluster.miou)
    # evaluating with another number of classes than the checkpoint's is refused by name
    assert (
        main(
            [
                "eval",
                "stego",
                "--config",
                CONFIG,
                *TINY,
                "n_classes=5",
                "--checkpoint",
                str(out / "stego.ckpt"),
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 2
    )
    assert "11" in capsys.readouterr().err


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    cfg = load_config(StegoConfig, CONFIG, TINY)
    train = split_data(cfg, "val", tmp_path / "cache")
    first = fit_stego(cfg, tmp_path / "a", train=train)
    resumed = fit_stego(
        load_config(StegoConfig, CONFIG, [*TINY, "max_steps=6"]),
        tmp_path / "a",
        resume=str(tmp_path / "a" / "checkpoints" / "last.ckpt"),
        train=train,
    )
    assert resumed.trainer.global_step == 6 and first.trainer.global_step == 4
    assert not torch.equal(first.net.cluster1[0].weight, resumed.net.cluster1[0].weight)


@pytest.mark.slow
def test_sweep_writes_table_and_plot_with_every_method(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert (
        main(
            [
                "stego",
                "sweep",
                "--config",
                CONFIG,
                *TINY,
                "max_steps=2",
                "--dims",
                "4",
                "8",
                "--methods",
                "stego",
                "pca",
                "random",
                "raw",
                "--out",
                str(out),
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted({(r["method"], int(r["dim"])) for r in rows}) == sorted(
        [("stego", 4), ("stego", 8), ("pca", 4), ("pca", 8), ("random", 4), ("random", 8), ("raw", 432)]
    )
    # a row holds its own run's scores: the saved STEGO head of dim 8, scored again
    val = split_data(load_config(StegoConfig, CONFIG, TINY), "val", tmp_path / "cache")
    again = evaluate_run(out / "stego-8-0" / "stego.ckpt", val, 11)
    (row,) = [r for r in rows if (r["method"], r["dim"]) == ("stego", "8")]
    assert float(row["cluster_miou"]) == pytest.approx(again.cluster.miou)
    assert float(row["linear_miou"]) == pytest.approx(again.linear.miou)
    plot = Image.open(out / "miou_vs_dim.png")
    assert plot.size[0] > 300 and np.array(plot).std() > 0
    assert json.loads((out / "results.json").read_text())["protocol"]["matching"].startswith("hungarian")


def test_projection_heads_plug_into_the_probes(tmp_path):
    """A fixed head trains only the probes: its weights do not move."""
    cfg = load_config(StegoConfig, CONFIG, TINY)
    train = split_data(cfg, "val", tmp_path / "cache")
    head = projection_head("pca", train.cache, 6)
    before = head.weight.clone()
    module = fit_stego(cfg, tmp_path / "p", head=head, train=train)
    assert torch.equal(module.net.weight, before) and module.cluster_probe.clusters.shape == (11, 6)
    assert not (tmp_path / "p" / "stego.ckpt").exists()
