"""Shipped configs: found by name inside the installed package, a path still works, `unseg configs` lists them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import unseg
from unseg.cli import main
from unseg.config import load_config, resolve_config, shipped_configs
from unseg.errors import ConfigError
from unseg.methods.leopart import LeopartConfig
from unseg.methods.stego.train import StegoConfig

PACKAGE_CONFIGS = Path(unseg.__file__).resolve().parent / "configs"


def files_on_disk() -> dict[str, Path]:
    """Every YAML file in the package's configs folder, by the name the loader should give it."""
    return {f"{p.parent.name}/{p.stem}": p for p in sorted(PACKAGE_CONFIGS.glob("*/*.yaml"))}


def test_every_shipped_file_has_a_name_and_no_name_is_invented():
    names = set(shipped_configs())
    assert names == set(files_on_disk())
    assert {
        "leopart/camvid_effnet",
        "leopart/imagenet100_vits16",
        "stego/camvid_effnet",
        "stego/cocostuff27_vitb8",
    } <= names
    assert set(shipped_configs("stego")) == {n for n in names if n.startswith("stego/")}


@pytest.mark.parametrize(
    "ref, method",
    [
        ("stego/cocostuff27_vitb8", None),
        ("stego/cocostuff27_vitb8.yaml", None),
        ("cocostuff27_vitb8", None),  # unique across methods
        ("cocostuff27_vitb8", "stego"),
    ],
)
def test_a_name_loads_the_same_settings_as_the_file(ref, method):
    path = files_on_disk()["stego/cocostuff27_vitb8"]
    by_name = load_config(StegoConfig, ref, ["dim=12"], method=method)
    by_path = load_config(StegoConfig, path, ["dim=12"])
    assert by_name == by_path
    raw = yaml.safe_load(path.read_text())
    assert (by_name.dim, by_name.loss.neg_inter_weight) == (12, raw["loss"]["neg_inter_weight"])


def test_a_bare_name_is_looked_up_in_the_commands_method():
    stego = load_config(StegoConfig, "camvid_effnet", method="stego")
    leopart = load_config(LeopartConfig, "camvid_effnet", method="leopart")
    assert stego == load_config(StegoConfig, files_on_disk()["stego/camvid_effnet"])
    assert leopart == load_config(LeopartConfig, files_on_disk()["leopart/camvid_effnet"])
    with pytest.raises(ConfigError, match=r"'camvid_effnet' is ambiguous: .*leopart/camvid_effnet and stego/camvid"):
        resolve_config("camvid_effnet")


def test_a_path_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stego").mkdir()
    (tmp_path / "stego" / "camvid_effnet.yaml").write_text("dim: 7\n")
    assert load_config(StegoConfig, "stego/camvid_effnet.yaml", method="stego").dim == 7
    assert load_config(StegoConfig, "stego/camvid_effnet", method="stego").dim == 70  # no such file: the name


@pytest.mark.parametrize(
    "ref, method, listed, not_listed",
    [
        ("cocostuff_vitb8", "stego", "stego/cocostuff27_vitb8", "leopart/"),
        ("leopart/camvid_effnet", "stego", "stego/camvid_effnet", "leopart/"),  # another method's config
        ("configs/stego/camvid_effnet.yaml", None, "leopart/coco_vits16", None),  # the old in-repository path
    ],
)
def test_an_unknown_name_is_one_line_listing_the_names(ref, method, listed, not_listed):
    with pytest.raises(ConfigError) as info:
        load_config(StegoConfig, ref, method=method)
    message = str(info.value)
    assert "\n" not in message and repr(ref) in message and listed in message
    if not_listed:
        assert not_listed not in message.split("; ", 1)[1]  # the list of names offered


def test_cli_rejects_an_unknown_config_with_status_2(capsys):
    assert main(["stego", "knn", "--config", "no_such_config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'no_such_config'" in err and "stego/potsdam3_vits8" in err


def test_unseg_configs_lists_every_shipped_file_with_its_summary(capsys):
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    on_disk = files_on_disk()
    assert set(listed) == set(on_disk)
    for name, path in on_disk.items():
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and listed[name] == first[2:].strip()
