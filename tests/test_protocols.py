"""Model-agnostic evaluation: any nn.Module scored by the protocols, equal to the same network as a Backbone."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import unseg
from unseg.backbones import Backbone
from unseg.backbones.base import IMAGENET_MEAN, IMAGENET_STD, normalise_saliency
from unseg.datasets import create_dataset
from unseg.demo import sample_root
from unseg.errors import SettingError
from unseg.features import image_to_tensor

FAST = {
    "dataset": "camvid",
    "input_size": 64,
    "seeds": range(2),
    "niter": 10,
    "nredo": 1,
    "num_workers": 0,
    "progress": False,
}


def plain_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 16, stride=16), nn.ReLU())


class ConvBackbone(Backbone):
    """The same network written as a unseg Backbone by hand (saliency: the feature norm)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.model, self.embed_dim, self.stride = net, 8, 16

    def forward_with_saliency(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model(x)
        return features, normalise_saliency(features.norm(dim=1))


def test_plain_module_equals_the_same_weights_as_a_backbone(tmp_path):
    net = plain_net()
    plain = unseg.evaluate(net, root=sample_root(), ks=[11, 30], stride=16, cache_dir=tmp_path, **FAST)
    wrapped = unseg.evaluate(
        ConvBackbone(copy.deepcopy(net)), root=sample_root(), ks=[11, 30], cache_dir=tmp_path, **FAST
    )
    assert [r.k for r in plain] == [11, 30]
    for a, b in zip(plain, wrapped, strict=True):
        assert a.miou == b.miou and a.pixel_accuracy == b.pixel_accuracy
        np.testing.assert_array_equal(a.labels, b.labels)
    # two caches (module class + state-dict fingerprint vs the Backbone class), the module's holding its features
    assert plain.data.cache.root != wrapped.data.cache.root
    dataset = create_dataset("camvid", sample_root(), "val")
    sample = {s.id: s for s in dataset.samples}[plain.data.cache.ids[0]]
    x = image_to_tensor(dataset.load_image(sample), (64, 64), IMAGENET_MEAN, IMAGENET_STD)[None]
    with torch.no_grad():
        np.testing.assert_allclose(plain.data.cache.features(0), net(x)[0].numpy(), rtol=1e-5, atol=1e-5)
    text = plain.describe()
    assert text.startswith("clustering on camvid/val (20 images), module-Sequential [fingerprint ")
    assert plain[0].summary() in text and "tokens 4x4" in text


def test_module_stride_comes_from_its_attribute_or_fails_clearly(tmp_path):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 16, stride=16)  # stride attribute (16, 16)
    assert unseg.ModuleBackbone(conv).stride == 16 and unseg.ModuleBackbone(conv).embed_dim == 4
    with pytest.raises(SettingError, match="stride=N"):
        unseg.ModuleBackbone(nn.Sequential(conv))
    with pytest.raises(SettingError, match=r"not to \(1, D, 2, 2\)"):
        unseg.ModuleBackbone(nn.Sequential(conv, nn.Flatten()), stride=16)
