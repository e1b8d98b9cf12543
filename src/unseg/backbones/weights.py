"""Load a backbone from any checkpoint layout of SPEC §1.

Supported, detected from the file's content:

- a plain backbone state dict (DINO ``*_pretrain.pth``, torchvision, efficientnet_pytorch);
- a DINO training checkpoint (``teacher`` / ``student`` dicts, keys under ``backbone.``
  or ``module.backbone.``);
- a Lightning checkpoint (``state_dict``): Leopart (``model.*`` student, ``teacher.*``)
  and STEGO (``net.model.*``).

The backbone is located by the prefix of its first key (e.g. ``cls_token`` for ViTs);
keys of heads and prototypes under that prefix are dropped; anything else that does
not fit raises a :class:`WeightsError` that names the file and the mismatch.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed

from ..errors import WeightsError
from .base import Backbone

ROLES = ("auto", "teacher", "student")
# (DINOv2 backbone files also hold ``mask_token``, used only in training; timm drops it too)
_HEAD_KEY = re.compile(r"(^|\.)(head|projection_head|prototypes|fc|classifier|_fc|mask_token)(\.|$)")
# first-key aliases of other layouts a backbone accepts (efficientnet_pytorch's names)
_ANCHOR_ALIASES = {"conv_stem.weight": ("_conv_stem.weight",)}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load to CPU; Lightning files with pickled configs need the full unpickler."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # pickled configs, but also junk (KeyError, EOFError, IndexError, ...)
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # any unpickling failure means: not a readable checkpoint
            raise WeightsError(f"weights file {path} is not a readable PyTorch checkpoint ({exc})") from None
    if not isinstance(ckpt, dict):
        raise WeightsError(f"weights file {path} holds a {type(ckpt).__name__}, not a state dict or checkpoint dict")
    return ckpt


def candidate_state_dicts(ckpt: dict[str, Any], role: str) -> list[tuple[str, dict[str, Any]]]:
    """(description, flat state dict) pairs a checkpoint may hold the backbone in, preferred first."""
    if role not in ROLES:
        raise WeightsError(f"weights role {role!r} is not one of {', '.join(ROLES)}")
    if isinstance(ckpt.get("state_dict"), dict):
        return [("Lightning checkpoint", ckpt["state_dict"])]
    if isinstance(ckpt.get("teacher"), dict) or isinstance(ckpt.get("student"), dict):
        order = ["student", "teacher"] if role == "student" else ["teacher", "student"]
        if role != "auto" and not isinstance(ckpt.get(role), dict):
            raise WeightsError(f"DINO checkpoint has no {role!r} network (it has {', '.join(r for r in order if r in ckpt)})")
        return [(f"DINO checkpoint ({r})", ckpt[r]) for r in order if isinstance(ckpt.get(r), dict)]
    for key in ("model", "module"):
        if isinstance(ckpt.get(key), dict):
            return [(f"checkpoint['{key}']", ckpt[key])]
    return [("backbone state dict", ckpt)]


def _prefixes(state: dict[str, Any], anchors: tuple[str, ...]) -> list[str]:
    found = []
    for key in state:
        for anchor in anchors:
            if key.endswith(anchor):
                prefix = key[: -len(anchor)]
                if prefix == "" or prefix.endswith("."):
                    found.append(prefix)
    # keep outermost prefixes only: ResNet's anchor ``conv1.weight`` also ends ``layer1.0.conv1.weight``
    return [p for p in found if not any(q != p and p.startswith(q) for q in found)]


def _pick_prefix(prefixes: list[str], role: str) -> str:
    """Teacher by default (what DINO and Leopart release), else the student."""
    if len(prefixes) == 1:
        return prefixes[0]
    wanted = role != "student"
    for prefix in prefixes:
        if ("teacher" in prefix) == wanted:
            return prefix
    raise WeightsError(f"checkpoint holds backbones under {', '.join(map(repr, prefixes))}; none is the {role}")


def extract_backbone_state(ckpt: dict[str, Any], backbone: Backbone, role: str = "auto",
                           source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The backbone's own state dict out of any supported checkpoint layout."""
    target = backbone.weight_state_dict()
    first = next(iter(target))
    anchors = (first,) + _ANCHOR_ALIASES.get(first, ())
    for description, state in candidate_state_dicts(ckpt, role):
        prefixes = _prefixes(state, anchors)
        if prefixes:
            break
    else:
        keys = ", ".join(list(_flat_keys(ckpt))[:5])
        raise WeightsError(
            f"{source} holds no key ending in {first!r}, so it is not a checkpoint of a "
            f"{type(backbone).__name__} backbone (its first keys: {keys})"
        )
    prefix = _pick_prefix(prefixes, role)
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    own = {k: v for k, v in own.items() if k in target or not _HEAD_KEY.search(k)}
    if "pos_embed" in own and "pos_embed" in target:
        own["pos_embed"] = _fit_pos_embed(own["pos_embed"], target["pos_embed"])
    if anchors[0] in own:  # native layout: check keys and shapes here, to name the mismatch
        _check_fits(own, target, f"{source} ({description}, prefix {prefix!r})", type(backbone).__name__)
    return own


def _flat_keys(ckpt: dict[str, Any]) -> list[str]:
    for _, state in candidate_state_dicts(ckpt, "auto"):
        return list(state)
    return []


def _fit_pos_embed(pos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Resample a checkpoint's position embedding to the model's grid (e.g. 224 -> 518 input)."""
    if pos.shape == target.shape or pos.ndim != 3 or pos.shape[-1] != target.shape[-1]:
        return pos
    n_src, n_dst = pos.shape[1], target.shape[1]
    for prefix in (1, 0):
        src, dst = (n_src - prefix) ** 0.5, (n_dst - prefix) ** 0.5
        if src.is_integer() and dst.is_integer():
            return resample_abs_pos_embed(pos, new_size=(int(dst),) * 2, old_size=(int(src),) * 2,
                                          num_prefix_tokens=prefix)
    return pos


def _check_fits(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], source: str, arch: str) -> None:
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong = [f"{k}: {tuple(state[k].shape)} in file, {tuple(target[k].shape)} expected"
             for k in target if k in state and state[k].shape != target[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} tensors of another shape (e.g. {'; '.join(wrong[:2])})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise WeightsError(f"{source} does not fit backbone {arch}: " + "; ".join(parts)
                           + ". Is it a checkpoint of another architecture?")


def load_backbone_weights(backbone: Backbone, path: str | Path, role: str = "auto") -> None:
    """Read ``path`` (any SPEC §1 layout) into ``backbone``, or raise a WeightsError naming it."""
    state = extract_backbone_state(read_checkpoint(path), backbone, role=role, source=f"weights file {path}")
    try:
        backbone.load_weight_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"weights file {path} does not fit {type(backbone).__name__}: {exc}") from None
