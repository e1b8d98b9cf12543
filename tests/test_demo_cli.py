"""The demo end to end on the shipped sample, and the CLI as a user meets it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from unseg.cli import main
from unseg.demo import run_demo, sample_root


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    report = run_demo(out=tmp_path, seeds=range(1), progress=False)
    printed = capsys.readouterr().out
    assert "K=11" in printed and "K=100" in printed and "hungarian" in printed and "greedy" in printed
    by_k = {r["k"]: r for r in report["results"]}
    # real ImageNet features on real street scenes: well above chance, below perfect
    assert 12 < by_k[11]["miou_mean"] < 60 and 35 < by_k[11]["accuracy_mean"] < 90
    assert 30 < by_k[100]["miou_mean"] < 75 and by_k[100]["miou_mean"] > by_k[11]["miou_mean"]
    assert by_k[11]["settings"]["input_size"] == [448, 448] and by_k[100]["matching"] == "greedy"
    overlays = sorted((tmp_path / "overlays").glob("*.png"))
    assert len(overlays) == 20 == len(report["overlays"])
    panel = np.array(Image.open(overlays[0]))
    assert panel.shape == (360, 3 * 480, 3)
    original = np.array(Image.open(sample_root() / "val" / overlays[0].name).convert("RGB"))
    assert (panel[:, :480] == original).all()  # first panel is the image itself
    assert not (panel[:, 480:960] == original).all()  # second is coloured by the segmentation
    assert json.loads((tmp_path / "metrics.json").read_text())["results"][0]["k"] == 11


def test_cli_backbones_lists_dim_stride_and_weights(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    for name, dim, stride in [
        ("dino_vits16", 384, 16),
        ("dino_vitb8", 768, 8),
        ("dinov2_vitb14", 768, 14),
        ("resnet50", 2048, 16),
        ("efficientnet_lite0", 432, 16),
    ]:
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert line.split()[1:3] == [str(dim), str(stride)]
    assert "offline" in out


def test_cli_datasets_lists_every_layout(capsys):
    assert main(["datasets", "--layout"]) == 0
    out = capsys.readouterr().out
    for name in [
        "voc12",
        "cocostuff27",
        "cocostuff15",
        "cocothing12",
        "cityscapes27",
        "potsdam3",
        "ade20k_parts",
        "imagenet100",
        "camvid",
        "folder",
    ]:
        assert name in out


def test_cli_cluster_on_the_sample_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(
        [
            "eval",
            "cluster",
            "--root",
            str(sample_root()),
            "--k",
            "11",
            "--seeds",
            "1",
            "--nredo",
            "1",
            "--input-size",
            "224",
            "--mask-size",
            "56",
            "--cache-dir",
            str(tmp_path / "c"),
            "--workers",
            "0",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "input 224x224" in printed and "56x56 masks" in printed and "K=11" in printed
    (result,) = json.loads(out.read_text())
    assert result["settings"]["num_images"] == 20 and 5 < result["miou"][0] < 70


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backbone", "nope"], "argument --backbone: expects a registered backbone name; got 'nope'"),
        (["--dataset", "nope"], "argument --dataset: expects a registered dataset name; got 'nope'"),
        (["--backbone", "dino_vits16"], "--weights"),
        (["--split", "test"], "test.txt"),
    ],
)
def test_cli_errors_are_one_clear_line(tmp_path, capsys, argv, message):
    code = main(["eval", "cluster", "--root", str(sample_root()), "--cache-dir", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_weights_of_another_architecture(tmp_path, capsys):
    import torch
    import torchvision

    path = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    code = main(
        [
            "eval",
            "cluster",
            "--root",
            str(sample_root()),
            "--backbone",
            "dino_vits16",
            "--weights",
            str(path),
            "--cache-dir",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and "cls_token" in err


def test_cli_empty_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(
        [
            "extract",
            "--dataset",
            "folder",
            "--root",
            str(tmp_path / "empty"),
            "--split",
            "",
            "--cache-dir",
            str(tmp_path / "c"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "holds no images" in err and str(tmp_path / "empty") in err
