"""The backbone's settings, written once (``BackboneSettings``): None means the default, resolved in one
place; ``fill`` takes a clustering's or checkpoint's values only where none was given; ``Source`` and
``SegmentOptions`` are built on them."""

from __future__ import annotations

import pytest

from unseg import BackboneSettings, SegmentOptions, Source, segments_protocol
from unseg.backbones import DEFAULT_BACKBONE
from unseg.backbones.views import DEFAULT_OVERLAP
from unseg.defaults import INPUT_SIZE
from unseg.errors import SettingError
from unseg.segment import segment


def test_none_fields_resolve_to_the_defaults():
    settings = BackboneSettings()  # None: "not given", which segment fills from a clustering or checkpoint
    assert (settings.backbone, settings.input_size, settings.window_overlap, settings.scales) == (None,) * 4
    assert settings.size == (INPUT_SIZE, INPUT_SIZE) and settings.backbone_name == DEFAULT_BACKBONE
    assert settings.views() == {"window": None, "window_overlap": DEFAULT_OVERLAP, "scales": (1.0,)}
    given = BackboneSettings("dino_vits16", input_size=[320, 480], window=64, window_overlap=0.5, scales=[1, 2])
    assert given.size == (320, 480) and given.backbone_name == "dino_vits16"
    assert given.views() == {"window": (64, 64), "window_overlap": 0.5, "scales": (1, 2)}
    assert given.describe() == {
        "backbone": "dino_vits16-win64o0.5-ms1+2",
        "weights": "default",
        "input_size": [320, 480],
        "window": [64, 64],
        "window_overlap": 0.5,
        "scales": [1, 2],
    }


def test_fill_takes_a_fallback_only_where_nothing_was_given():
    given = BackboneSettings(input_size=320, window_overlap=0.5)
    filled = given.fill(backbone="dino_vits16", input_size=224, window=[64, 64], window_overlap=0.75, scales=None)
    assert (filled.backbone, filled.input_size, filled.window) == ("dino_vits16", 320, [64, 64])
    assert filled.window_overlap == 0.5
    assert filled.scales is None  # a None fallback (e.g. an older clustering without views) changes nothing
    assert given.backbone is None and given.window is None  # a copy: the settings given stay as they were
    with pytest.raises(SettingError, match="scale 2 makes the 5000x5000 input"):  # checked again once filled
        BackboneSettings(input_size=5000).fill(scales=(1, 2))


def test_settings_are_checked_when_made():
    for bad, needle in (
        ({"input_size": 0}, "input size"),
        ({"window_overlap": 1.0}, "window_overlap"),
        ({"scales": 2}, "not a list"),
        ({"batch_size": 0}, "batch_size"),
        ({"device": "gpu"}, "device"),
    ):
        with pytest.raises(SettingError, match=needle):
            BackboneSettings(**bad)


def test_a_source_is_backbone_settings_on_a_dataset():
    source = Source("dino_vits16", "dino.pth", dataset="voc", root="VOC", input_size=224)
    assert isinstance(source, BackboneSettings)
    assert (source.backbone, source.weights, source.dataset) == ("dino_vits16", "dino.pth", "voc")
    assert source.size == (224, 224)
    assert Source(dataset="voc").describe() == {
        "backbone": DEFAULT_BACKBONE,
        "weights": "default",
        "input_size": [INPUT_SIZE, INPUT_SIZE],
        "dataset": "voc",
    }


def test_segment_options_hold_the_backbone_settings_once():
    options = SegmentOptions(model=BackboneSettings(input_size=320), method="kmeans")
    assert options.model.size == (320, 320)
    assert not {"backbone", "input_size", "window", "device", "batch_size"} & set(vars(SegmentOptions()))
    with pytest.raises(SettingError, match="model is a str"):
        SegmentOptions(model="dino_vits16")
    with pytest.raises(SettingError, match="window_overlap"):  # the model's own checks
        SegmentOptions(model=BackboneSettings(window_overlap=2.0))


def test_segment_refuses_an_unknown_option_by_name(tmp_path):
    with pytest.raises(SettingError, match="no option colour, sizes"):
        segment(tmp_path, colour="red", sizes=3, groups=2)


def test_segments_protocol_refuses_backbone_settings_it_would_not_use(tmp_path):
    options = SegmentOptions(model=BackboneSettings(input_size=320))
    with pytest.raises(SettingError, match="on the Source, not in options.model"):
        segments_protocol(Source(dataset="folder", root=tmp_path), options=options)
